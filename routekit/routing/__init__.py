"""Routing: per-prompt expert mixtures and the routers that choose them."""

from .base import Router, load_router
from .classifier import ClassifierRouter, hidden_features
from .fixed import FixedRouter
from .mixture import Mixture, alpha_table
from .prompt import PromptRouter

__all__ = [
    "Router", "load_router", "ClassifierRouter", "hidden_features", "FixedRouter", "Mixture",
    "alpha_table", "PromptRouter",
]
