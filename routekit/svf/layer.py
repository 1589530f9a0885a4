"""SVFLinear: a linear layer whose singular values are rescaled by a trainable vector z.

W = U diag(S) Vh. The factored forward computes ((x Vhᵀ) ⊙ (S ⊙ z)) Uᵀ + b, where z is
either the trainable ``svf_z`` (r,) or a per-row matrix (batch, r) so every row of a batch
can carry its own expert mixture. The merged forward writes U diag(S ⊙ z) Vh into the base
layer's weight (base speed) and keeps the original weight to restore it bit-exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import ConfigError
from .factors import Factors


class SVFLinear(nn.Module):
    """Wraps an ``nn.Linear`` or GPT-2 ``Conv1D`` (kept as ``base_layer``) with SVF factors."""

    def __init__(
        self, base_layer: nn.Module, factors: Factors, z_init: float = 1.0,
        factor_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.is_conv1d = isinstance(base_layer, Conv1D)
        u, s, vh = factors
        # Buffers are not persistent: the base's state dict stays the base's, and the factors
        # are recomputed (or read from the cache) from the base weights.
        self.register_buffer("svf_U", u.to(factor_dtype).contiguous(), persistent=False)
        self.register_buffer("svf_S", s.to(torch.float32).contiguous(), persistent=False)
        self.register_buffer("svf_Vh", vh.to(factor_dtype).contiguous(), persistent=False)
        self.svf_z = nn.Parameter(torch.full_like(self.svf_S, float(z_init)))
        self._row_sz: torch.Tensor | None = None  # (batch, r): S ⊙ z per row
        self._kept_weight: torch.Tensor | None = None  # original weight while merged
        self._fusion = None  # a FusedGroup when siblings share this layer's input
        self.svf_disabled = False  # True: compute the base layer (e.g. a KL reference pass)

    @property
    def rank(self) -> int:
        return self.svf_S.shape[0]

    @property
    def merged(self) -> bool:
        return self._kept_weight is not None

    @property
    def weight(self) -> torch.Tensor:
        # Some HF code reads ``layer.weight.dtype``/``.device``; forward the base's.
        return self.base_layer.weight

    def extra_repr(self) -> str:
        return f"rank={self.rank}, merged={self.merged}, conv1d={self.is_conv1d}"

    # ----- per-row z -------------------------------------------------------------------
    def set_row_z(self, z: torch.Tensor | None) -> None:
        """Use ``z`` (batch, r) instead of ``svf_z``, one row per batch row; None clears it."""
        if z is None:
            self._row_sz = None
            return
        if self.merged:
            raise ConfigError("per-row z needs the factored path; call unmerge(model) first.")
        self._row_sz = (self.svf_S * z.to(self.svf_S)).to(self.svf_U.dtype).contiguous()

    # ----- forward ---------------------------------------------------------------------
    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        if self._row_sz is None:
            return (self.svf_S * self.svf_z).to(self.svf_U.dtype)
        sz = self._row_sz
        if x.dim() < 2 or x.shape[0] != sz.shape[0]:
            raise ConfigError(
                f"per-row z was set for a batch of {sz.shape[0]} rows but the input has shape "
                f"{tuple(x.shape)}; set a z (or mixture) for every row of this batch."
            )
        return sz.view(sz.shape[0], *([1] * (x.dim() - 2)), sz.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.svf_disabled:
            return self._base_forward(x)
        if self.merged:
            return self.base_layer(x)
        if self._fusion is not None:
            return self._fusion.forward(self, x)
        dtype = self.svf_Vh.dtype
        h = F.linear(x.to(dtype), self.svf_Vh)
        # In place when nothing needs h for a backward pass: saves one (tokens, r) buffer.
        h = h.mul_(self._scale(x)) if not torch.is_grad_enabled() else h * self._scale(x)
        bias = self.base_layer.bias
        y = F.linear(h, self.svf_U, None if bias is None else bias.to(dtype))
        return y.to(x.dtype)

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        # While merged the base weight holds W', so the base is recomputed from the kept copy.
        if not self.merged:
            return self.base_layer(x)
        w = self._kept_weight
        if self.is_conv1d:
            return torch.addmm(self.base_layer.bias, x.reshape(-1, x.shape[-1]), w).view(
                *x.shape[:-1], w.shape[1])
        return F.linear(x, w, self.base_layer.bias)

    # ----- merge / unmerge -------------------------------------------------------------
    def adapted_weight(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """U diag(S ⊙ z) Vh in float32, in the base layer's own orientation."""
        z = self.svf_z if z is None else z
        w = (self.svf_U.float() * (self.svf_S * z.float())) @ self.svf_Vh.float()
        return w.t() if self.is_conv1d else w

    @torch.no_grad()
    def merge(self) -> None:
        """Write U diag(S ⊙ svf_z) Vh into the base weight, keeping the original."""
        if self._row_sz is not None:
            raise ConfigError("cannot merge while a per-row z is set; clear it first.")
        weight = self.base_layer.weight
        if self._kept_weight is None:
            self._kept_weight = weight.detach().clone()
        weight.copy_(self.adapted_weight().to(weight.dtype))
        if not self.svf_disabled:
            # Merged, this layer *is* its base layer: skip a module call per token (decode speed).
            self.forward = self.base_layer.forward

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original weight bit-exactly from the kept copy."""
        if self._kept_weight is None:
            return
        self.base_layer.weight.copy_(self._kept_weight)
        self._kept_weight = None
        self.__dict__.pop("forward", None)
