"""SVFLinear: a linear layer whose singular values are rescaled by a trainable vector z.

W = U diag(S) Vh. The factored forward computes ((x Vhᵀ) ⊙ (S ⊙ z)) Uᵀ + b, where z is the
trainable ``svf_z`` (r,) unless the current call carries its own scales; S ⊙ z is always
float32, whatever the factors' dtype. The factored forward never reads the base weight, so
``get_svf_model`` gives back its resident pages when it is memory-mapped from the checkpoint
(``routekit.svf.residency``): no copy of W is kept. The merged forward puts U diag(S ⊙ z) Vh
in the base layer's weight (base speed) and keeps the original tensor aside, uncopied, to
restore it bit-exactly.

Per-call state (a mixture per batch row, "compute the base") never lives on the layer: it
is a :class:`SVFCallState` in a ``contextvars.ContextVar``, so two threads (or asyncio
tasks) calling one model at once each see only their own state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import ConfigError
from .factors import Factors


@dataclass(frozen=True)
class SVFCallState:
    """What one call (one thread's ``with`` block) asks of the SVF layers.

    ``scales`` maps ``id(layer)`` to S ⊙ z (float32) for that layer: (r,) for the whole batch, or
    (rows, r) with one row per prompt; layers not named use their ``svf_z``. ``disabled``
    makes every layer compute its base.
    """

    scales: Mapping[int, torch.Tensor] = field(default_factory=dict)
    disabled: bool = False
    # (layer id, batch) -> scales repeated for num_return_sequences; filled lazily.
    _expanded: dict = field(default_factory=dict, compare=False, repr=False)


_CALL: ContextVar[SVFCallState | None] = ContextVar("routekit_svf_call", default=None)


def current_state() -> SVFCallState | None:
    """The SVF state of the running call, or None."""
    return _CALL.get()


@contextlib.contextmanager
def call_state(state: SVFCallState) -> Iterator[SVFCallState]:
    """Make ``state`` the running call's SVF state inside the block (this context only)."""
    token = _CALL.set(state)
    try:
        yield state
    finally:
        _CALL.reset(token)


def svf_disabled() -> contextlib.AbstractContextManager[SVFCallState]:
    """A context in which this thread's SVF layers compute their base (merged or not), even
    inside a ``routekit.mixture`` block (the kind's part of ``disable_experts``)."""
    return call_state(SVFCallState(disabled=True))


def apply_scale(h: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """h ⊙ scale in h's dtype, the product taken in float32 when h is narrower (bf16 factors:
    the float32 S ⊙ z is never rounded to bf16 first); in place when nothing needs h for a
    backward pass (saves one (tokens, r) buffer)."""
    if not torch.is_grad_enabled():
        return h.mul_(scale)
    out = h * scale
    return out if out.dtype == h.dtype else out.to(h.dtype)


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
        self._kept_weight: torch.Tensor | None = None  # the original weight tensor while merged
        self._fusion = None  # a FusedGroup when siblings share this layer's input

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

    def row_scales(self, z: torch.Tensor) -> torch.Tensor:
        """S ⊙ z in float32 (whatever the factors' dtype), for z of shape (r,) or (rows, r)."""
        return (self.svf_S * z.to(self.svf_S)).contiguous()

    # ----- forward ---------------------------------------------------------------------
    def _scale(self, x: torch.Tensor, state: SVFCallState | None) -> torch.Tensor:
        sz = state.scales.get(id(self)) if state is not None else None
        if sz is None:
            return self.svf_S * self.svf_z
        if sz.dim() == 1:
            return sz
        rows, batch = sz.shape[0], (x.shape[0] if x.dim() >= 2 else -1)
        if batch != rows:
            if batch <= 0 or batch % rows:
                raise ConfigError(
                    f"the mixture has {rows} row(s) but the input has shape {tuple(x.shape)}; "
                    "give one row of alpha per prompt of this batch (rows are repeated for "
                    "num_return_sequences)."
                )
            key = (id(self), batch)
            cached = state._expanded.get(key)
            if cached is None:
                # generate() repeats each prompt num_return_sequences times, consecutively.
                cached = state._expanded[key] = sz.repeat_interleave(batch // rows, dim=0)
            sz = cached
        return sz.view(sz.shape[0], *([1] * (x.dim() - 2)), sz.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = _CALL.get()
        if state is not None and state.disabled:
            return self._base_forward(x)
        if self.merged:
            return self.base_layer(x)
        if self._fusion is not None:
            return self._fusion.forward(self, x, state)
        dtype = self.svf_Vh.dtype
        h = F.linear(x.to(dtype), self.svf_Vh)
        h = apply_scale(h, self._scale(x, state))
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
        """U diag(S ⊙ z) Vh in float32, in the base layer's own orientation.

        This is the SVD reconstruction: with z = 1 it equals the base weight only up to
        float32 rounding (see ``routekit.svf.delta`` for the exact update ΔW).
        """
        z = self.svf_z if z is None else z
        w = (self.svf_U.float() * (self.svf_S * z.float())) @ self.svf_Vh.float()
        return w.t() if self.is_conv1d else w

    @torch.no_grad()
    def delta_weight(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW = U diag(S ⊙ (z − 1)) Vh in float32, in the base layer's orientation (z default
        ``svf_z``); exact zeros where z = 1 (only the singular directions with z ≠ 1 enter the
        product), so W + ΔW leaves out the SVD reconstruction error (``routekit.svf.delta``)."""
        z = self.svf_z if z is None else z
        u, s, vh = self.svf_U, self.svf_S, self.svf_Vh
        scale = s.float() * (z.detach().to(s.device, torch.float32) - 1.0)
        keep = scale.nonzero().squeeze(1)
        if keep.numel() == 0:
            delta = torch.zeros(u.shape[0], vh.shape[1], dtype=torch.float32, device=u.device)
        else:
            delta = (u[:, keep].float() * scale[keep]) @ vh[keep].float()
        return delta.t().contiguous() if self.is_conv1d else delta

    @torch.no_grad()
    def weight_with_delta(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """W + ΔW in the base weight's dtype and device (z default ``svf_z``): the original
        tensor itself, bit for bit, where z = 1 (ΔW is then exactly zero)."""
        w = self.original_weight
        d = self.delta_weight(z)
        return w if not d.any() else (w.float() + d.to(w.device)).to(w.dtype)

    @property
    def original_weight(self) -> torch.Tensor:
        """The base weight as loaded (while merged, the base layer holds W' and keeps W aside)."""
        kept = self._kept_weight
        return (kept if kept is not None else self.base_layer.weight).detach()

    @torch.no_grad()
    def merge(self) -> None:
        """Put U diag(S ⊙ svf_z) Vh in the base weight (the same Parameter, a new tensor),
        keeping the original tensor itself aside: no copy, and a memory-mapped original stays
        on disk rather than in memory."""
        weight = self.base_layer.weight
        if self._kept_weight is None:
            self._kept_weight = weight.data
        weight.data = self.adapted_weight().to(weight.dtype).contiguous()
        # Merged, this layer *is* its base layer: skip the checks of ``forward`` and the base
        # layer's module call per token (decode speed).
        self.forward = self._merged_forward

    def _merged_forward(self, x: torch.Tensor) -> torch.Tensor:
        state = _CALL.get()
        if state is not None and state.disabled:
            return self._base_forward(x)
        return self.base_layer.forward(x)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original weight tensor back (bit-exact: it is the one merge set aside)."""
        if self._kept_weight is None:
            return
        self.base_layer.weight.data = self._kept_weight
        self._kept_weight = None
        self.__dict__.pop("forward", None)
