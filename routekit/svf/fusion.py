"""Fusing SVF layers that read the same input (gate/up, q/k/v) into one Vh matmul.

HF blocks call ``gate_proj(x)`` and ``up_proj(x)`` one after the other on the same tensor.
When the first member of such a group is called, the group projects x onto all members'
right singular vectors in one matmul, scales, applies every member's U, returns its own
output and keeps the others for their calls with that same tensor (checked by identity).
Any other call pattern falls back to each layer's own computation, so fusion never changes
results, only speed. The kept outputs belong to the call that made them: they live in a
``ContextVar``, never on the shared group, so two threads never receive each other's.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from .layer import apply_scale

# Sibling names that HF architectures feed with one tensor.
SHARED_INPUT_GROUPS = (
    ("gate_proj", "up_proj"),
    ("w1", "w3"),
    ("q_proj", "k_proj", "v_proj"),
    ("query", "key", "value"),
)


# id(group) -> (the input tensor, {id(member): its pending output}) for this context only.
_PENDING: ContextVar[dict | None] = ContextVar("routekit_svf_fusion_pending", default=None)


def _pending() -> dict:
    store = _PENDING.get()
    if store is None:
        store = {}
        _PENDING.set(store)  # per thread / task: a new thread starts with an empty context
    return store


class FusedGroup:
    """Plain object (not a Module, so it adds nothing to state dicts) tying siblings together."""

    def __init__(self, members: list[nn.Module]) -> None:
        self.members = members
        self.offsets = []
        start = 0
        for m in members:
            self.offsets.append((start, start + m.rank))
            start += m.rank
        leader = members[0]
        # One (sum r, in) buffer; each member's Vh becomes a view of it (no second copy).
        fused = torch.cat([m.svf_Vh for m in members]).contiguous()
        leader.register_buffer("svf_Vh_fused", fused, persistent=False)
        for m, (a, b) in zip(members, self.offsets):
            m.svf_Vh = fused[a:b]

    def forward(self, member: nn.Module, x: torch.Tensor, state=None) -> torch.Tensor:
        key, store = id(member), _pending()
        kept = store.get(id(self))
        if kept is not None and kept[0] is x and key in kept[1]:
            out = kept[1].pop(key)
            if not kept[1]:
                del store[id(self)]
            return out
        leader = self.members[0]
        dtype = leader.svf_Vh_fused.dtype
        h = F.linear(x.to(dtype), leader.svf_Vh_fused)
        scales = [m._scale(x, state) for m in self.members]
        lead = max((s.shape[:-1] for s in scales), key=len)  # some members may have per-row z
        scale = torch.cat([s.expand(*lead, s.shape[-1]) for s in scales], dim=-1)
        h = apply_scale(h, scale)
        outs = {}
        for m, (a, b) in zip(self.members, self.offsets):
            bias = m.base_layer.bias
            outs[id(m)] = F.linear(h[..., a:b], m.svf_U, None if bias is None else bias.to(dtype)).to(x.dtype)
        out = outs.pop(key)
        store[id(self)] = (x, outs)
        return out

    def remove(self) -> None:
        for m in self.members:
            m.svf_Vh = m.svf_Vh.clone()
            object.__setattr__(m, "_fusion", None)
        del self.members[0]._buffers["svf_Vh_fused"]
        store = _PENDING.get()
        if store is not None:
            store.pop(id(self), None)


def install_fusion(model: nn.Module) -> int:
    """Group SVF siblings that share an input; returns how many groups were formed."""
    from .layer import SVFLinear

    groups = 0
    for parent in model.modules():
        for names in SHARED_INPUT_GROUPS:
            members = [getattr(parent, n, None) for n in names]
            if not all(isinstance(m, SVFLinear) for m in members):
                continue
            if len({(m.svf_Vh.shape[1], m.svf_Vh.dtype, m.svf_Vh.device) for m in members}) != 1:
                continue
            group = FusedGroup(members)
            for m in members:
                object.__setattr__(m, "_fusion", group)  # plain attribute, not a submodule
            groups += 1
    return groups


def remove_fusion(model: nn.Module) -> None:
    from .layer import SVFLinear

    seen = set()
    for m in model.modules():
        group = getattr(m, "_fusion", None) if isinstance(m, SVFLinear) else None
        if group is not None and id(group) not in seen:
            seen.add(id(group))
            group.remove()
