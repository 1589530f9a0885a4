"""SVFExpert: the z vectors of one expert with their metadata, saved safely, and mixing.

An expert directory holds ``expert_config.json`` (kind ``"svf"``, metadata, layer order) and
``expert_model.safetensors`` (one float32 vector per layer, key ``<layer>.svf_z``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError, ExpertFileError, FingerprintMismatchError
from ..experts import (
    AlphaLike,
    Expert,
    check_expert_kind,
    normalize_alpha,
    refuse_foreign_directory,
)
from ..io import (
    atomic_directory,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors,
    model_fingerprint,
    read_config,
)

CONFIG_NAME = "expert_config.json"
WEIGHTS_NAME = "expert_model.safetensors"
FORMAT = "routekit-svf-expert"
_Z_SUFFIX = ".svf_z"


class _ExpertFileConfig(BaseModel):
    """What ``expert_config.json`` must contain (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["svf"] = "svf"
    format: str
    version: int
    name: str
    target_modules: str | list[str]
    base_fingerprint: str
    layers: list[tuple[str, int]]  # (module name, rank) in model order
    training_config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}


def check_z(layer: str, z: torch.Tensor, rank: int | None = None, what: str = "expert") -> None:
    """Refuse a z that is not a finite 1-D vector (of length ``rank`` when given)."""
    if z.dim() != 1 or (rank is not None and z.shape[0] != rank):
        want = f"({rank},)" if rank is not None else "(r,)"
        raise ExpertFileError(
            f"{what}: z of layer {layer!r} has shape {tuple(z.shape)}, expected {want}; "
            "the expert was made for a different model or target_modules."
        )
    if not torch.isfinite(z).all():
        bad = int((~torch.isfinite(z)).sum())
        raise ExpertFileError(
            f"{what}: z of layer {layer!r} holds {bad} NaN/inf value(s); the expert is broken "
            "(diverged training or a damaged file): retrain or restore it."
        )


class SVFExpert(Expert):
    """z vectors per layer (in model order) plus name, target modules, base fingerprint,
    training config and metrics. The z vectors are the expert's own copies: changing the
    tensors it was built from (a model's ``svf_z`` that keeps training) never changes it.
    They are float32 on the CPU unless ``dtype`` / ``device`` say otherwise (applying an
    expert computes in float32 whatever its dtype; files always hold float32)."""

    kind = "svf"

    def __init__(
        self,
        z: dict[str, torch.Tensor],
        *,
        name: str,
        target_modules: str | list[str],
        base_fingerprint: str,
        training_config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if not z:
            raise ExpertFileError(f"expert {name!r} has no layers.")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ConfigError(f"expert {name!r}: dtype {dtype!r} is not a floating torch dtype.")
        # clone(): .to()/.contiguous() return the same storage for a CPU float32 tensor, so
        # without it an expert exported from a live model would follow the model's training.
        self.z = {k: v.detach().to(device, dtype).clone() for k, v in z.items()}
        for layer, vec in self.z.items():
            check_z(layer, vec, what=f"expert {name!r}")
        self.name = name
        self.target_modules = target_modules
        self.base_fingerprint = base_fingerprint
        self.training_config = dict(training_config or {})
        self.metrics = dict(metrics or {})

    def __repr__(self) -> str:
        return (
            f"SVFExpert(name={self.name!r}, layers={len(self.z)}, params={self.num_parameters}, "
            f"target_modules={self.target_modules!r}, base={self.base_fingerprint})"
        )

    @property
    def base_id(self) -> str:
        return self.base_fingerprint

    @property
    def layer_names(self) -> list[str]:
        return list(self.z)

    @property
    def num_parameters(self) -> int:
        return sum(v.numel() for v in self.z.values())

    def _file_config(self) -> dict[str, Any]:
        return _ExpertFileConfig(
            format=FORMAT, version=2, name=self.name, target_modules=self.target_modules,
            base_fingerprint=self.base_fingerprint,
            layers=[(k, int(v.shape[0])) for k, v in self.z.items()],
            training_config=self.training_config, metrics=self.metrics,
        ).model_dump()

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the expert directory in one atomic rename (a killed save leaves the old one).

        Refuses to replace a directory that holds anything but expert files.
        """
        target = Path(save_directory)
        refuse_foreign_directory(target, (CONFIG_NAME, WEIGHTS_NAME))
        with atomic_directory(target) as tmp:
            atomic_save_safetensors(
                {k + _Z_SUFFIX: v.to("cpu", torch.float32) for k, v in self.z.items()},
                tmp / WEIGHTS_NAME,
                metadata={"format": FORMAT, "name": self.name},
            )
            atomic_write_json(tmp / CONFIG_NAME, self._file_config())
        return target

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, base_model: torch.nn.Module | None = None,
        dtype: torch.dtype | None = None, device: str | torch.device | None = None,
    ) -> SVFExpert:
        """Load and check an expert directory (shapes, layer set, finite values).

        With ``base_model`` (plain or SVF-wrapped) an expert trained on another base is refused
        here, naming both fingerprints; without it the same check runs when the expert is
        applied (``routekit.mixture``, ``merge``). ``dtype`` / ``device``: where the z vectors
        are kept (default float32 on the CPU), as ``ProxyExpert.from_pretrained`` takes them.
        """
        directory = Path(directory)
        check_expert_kind(directory, cls)
        cfg = read_config(directory / CONFIG_NAME, _ExpertFileConfig, "expert config")
        if cfg.format != FORMAT:
            raise ExpertFileError(f"{str(directory)!r} holds format {cfg.format!r}, not {FORMAT!r}.")
        tensors = load_safetensors(directory / WEIGHTS_NAME, what="expert weights")
        z = {}
        for layer, rank in cfg.layers:
            t = tensors.pop(layer + _Z_SUFFIX, None)
            if t is None:
                raise ExpertFileError(
                    f"expert weights in {str(directory)!r} lack layer {layer!r} named in its config."
                )
            check_z(layer, t, rank, what=f"expert file {str(directory)!r}")
            z[layer] = t
        if tensors:
            raise ExpertFileError(
                f"expert weights in {str(directory)!r} hold tensors its config does not list: "
                f"{sorted(tensors)[:5]}"
            )
        if base_model is not None:
            have = getattr(base_model, "svf_base_fingerprint", None) or model_fingerprint(base_model)
            if have != cfg.base_fingerprint:
                raise FingerprintMismatchError(
                    f"expert {str(directory)!r} was trained on base {cfg.base_fingerprint} but the "
                    f"given model's base is {have}; load the base it was trained on."
                )
        return cls(
            z, name=cfg.name, target_modules=cfg.target_modules,
            base_fingerprint=cfg.base_fingerprint, training_config=cfg.training_config,
            metrics=cfg.metrics, dtype=dtype or torch.float32, device=device or "cpu",
        )


def check_compatible(experts: Sequence[SVFExpert]) -> None:
    """Refuse experts that cannot be mixed: other base, other target modules, other layers."""
    if not experts:
        raise ConfigError("no experts given to mix; pass at least one SVFExpert.")
    first = experts[0]
    for e in experts[1:]:
        if e.base_fingerprint != first.base_fingerprint:
            raise FingerprintMismatchError(
                f"expert {e.name!r} was trained on base {e.base_fingerprint} but expert "
                f"{first.name!r} on base {first.base_fingerprint}; only experts of one base mix."
            )
        if e.target_modules != first.target_modules or list(e.z) != list(first.z):
            raise ConfigError(
                f"expert {e.name!r} targets {e.target_modules!r} ({len(e.z)} layers) but expert "
                f"{first.name!r} targets {first.target_modules!r} ({len(first.z)} layers); "
                "mix only experts with the same target_modules."
            )
        for layer, v in e.z.items():
            if v.shape != first.z[layer].shape:
                raise ExpertFileError(
                    f"layer {layer!r}: expert {e.name!r} has z of shape {tuple(v.shape)}, expert "
                    f"{first.name!r} {tuple(first.z[layer].shape)}."
                )


def mix_experts(
    experts: Sequence[SVFExpert], alpha: AlphaLike, name: str | None = None
) -> SVFExpert:
    """One expert for one fixed mixture: z = 1 + Σₖ αₖ (zₖ − 1) per layer (``routekit.mixture``'s
    rule; Transformer²'s Σₖ αₖ zₖ when the weights sum to 1).

    ``alpha``: (K,) one weight per expert, or one row (1, K) / (1, K, L) as in
    ``routekit.mixture``. Use it to merge a mixture (``merge(model, mix_experts(...))``) or to
    export one (``save_adapted_checkpoint``). Not ``routekit.mixture`` (the context that
    applies experts per call) nor ``routekit.Mixture`` (a router's weights for one prompt).
    """
    check_compatible(experts)
    layers = experts[0].layer_names
    a = normalize_alpha(alpha, len(experts), len(layers))
    if a.ndim >= 2:
        if a.shape[0] != 1:
            raise ConfigError(
                f"mix_experts makes one expert, so alpha needs one row; got {a.shape[0]} rows "
                "(use routekit.mixture for one mixture per prompt)."
            )
        a = a[0]
    z = {}
    for i, layer in enumerate(layers):
        delta = torch.stack([e.z[layer].to("cpu", torch.float32) for e in experts]) - 1.0  # (K, r)
        z[layer] = 1.0 + (a[:, i] if a.ndim == 2 else a) @ delta
    first = experts[0]
    return SVFExpert(
        z, name=name or "+".join(e.name for e in experts), target_modules=first.target_modules,
        base_fingerprint=first.base_fingerprint,
        training_config={"mixture_of": [e.name for e in experts], "alpha": a.tolist()},
    )
