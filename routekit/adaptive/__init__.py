"""Two-pass adaptive inference (Transformer²) over experts of either kind.

- ``model``: :class:`AdaptiveModel` (route every prompt, then generate every row with its own
  mixture in one ``generate`` call; bundles on disk; merged export), :class:`AdaptiveOutput`
  and :func:`check_experts_fit`;
- ``commands``: ``routekit generate`` and ``routekit export``.
"""

from .model import CONFIG_NAME, AdaptiveModel, AdaptiveOutput, check_experts_fit

__all__ = ["CONFIG_NAME", "AdaptiveModel", "AdaptiveOutput", "check_experts_fit"]
