"""routekit: composable routing adapters (SVF experts, proxy-tuning, routers) for HF causal LMs."""

from . import errors, io, real, routing, training, world
from .adaptive import AdaptiveModel
from .errors import RoutekitError
from .eval import EvalResult, evaluate, generate, proxy_generate
from .experts import Expert, disable_experts, load_expert
from .experts.mixture import mixture
from .models import load_model, resolve_model
from .proxy import FusionRule, ProxyExpert, ProxyLogitsProcessor
from .routing import (
    ClassifierRouter,
    FewShotRouter,
    FixedRouter,
    LogitFusionRouter,
    Mixture,
    PromptRouter,
    Router,
    load_router,
)
from .svf import (
    SVFConfig,
    SVFExpert,
    disable_svf,
    get_svf_model,
    merge,
    mix_experts,
    save_adapted_checkpoint,
    svf_delta,
    unmerge,
    unwrap_svf_model,
)
from .tasks import Example, Task, get_task
from .training import TrainConfig, TrainResult, train

__all__ = [
    "errors",
    "io",
    "world",
    "real",
    "training",
    "routing",
    "RoutekitError",
    # models, tasks, evaluation
    "load_model",
    "resolve_model",
    "Example",
    "Task",
    "get_task",
    "EvalResult",
    "evaluate",
    "generate",
    # experts of either kind, and the one way to apply a mixture of them
    "Expert",
    "load_expert",
    "mixture",
    "disable_experts",
    # SVF experts (weight space)
    "SVFConfig",
    "SVFExpert",
    "get_svf_model",
    "unwrap_svf_model",
    "merge",
    "unmerge",
    "mix_experts",
    "disable_svf",
    "svf_delta",
    "save_adapted_checkpoint",
    # proxy experts (logit space)
    "ProxyExpert",
    "ProxyLogitsProcessor",
    "proxy_generate",
    # routing: a mixture per prompt, and two-pass adaptive inference
    "Mixture",
    "Router",
    "FixedRouter",
    "PromptRouter",
    "ClassifierRouter",
    "FewShotRouter",
    "LogitFusionRouter",
    "FusionRule",
    "load_router",
    "AdaptiveModel",
    # training
    "TrainConfig",
    "TrainResult",
    "train",
]
__version__ = "0.1.0"
