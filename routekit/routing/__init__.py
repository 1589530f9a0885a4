"""Routing: per-prompt expert mixtures and the routers that choose them.

A router's ``route(prompts)`` returns one :class:`Mixture` per prompt; ``alpha_table`` turns
a batch of them into the alpha that ``routekit.experts.mixture`` applies.
"""

from .base import Router, load_router
from .classifier import ClassifierRouter, hidden_features
from .data import read_routing_jsonl, task_routing_prompts
from .fewshot import FewShotRouter, fewshot_objective
from .fixed import FixedRouter
from .fusion import LogitFusionRouter
from .mixture import Mixture, alpha_table
from .prompt import PromptRouter
from .search import SearchResult, cem_search, cmaes_search

__all__ = [
    "Router", "load_router", "ClassifierRouter", "hidden_features", "read_routing_jsonl",
    "task_routing_prompts", "FewShotRouter", "fewshot_objective", "FixedRouter",
    "LogitFusionRouter", "Mixture",
    "alpha_table", "PromptRouter", "SearchResult", "cem_search", "cmaes_search",
]
