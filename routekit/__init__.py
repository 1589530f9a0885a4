"""routekit: composable routing adapters (SVF experts, proxy-tuning, routers) for HF causal LMs."""

from . import errors, io, training, world
from .errors import RoutekitError
from .eval import EvalResult, evaluate, generate
from .models import load_model, resolve_model
from .proxy import (
    ProxyExpert,
    ProxyExpertConfig,
    ProxyLogitsProcessor,
    check_vocab_compatible,
    proxy_generate,
)
from .svf import (
    RowMixture,
    SVFConfig,
    SVFExpert,
    SVFLinear,
    clear_row_z,
    disable_svf,
    export_expert,
    get_svf_model,
    merge,
    mix_experts,
    row_z_from_mixture,
    set_expert,
    set_row_mixture,
    set_row_z,
    svf_layers,
    unmerge,
    unwrap_svf_model,
    use_row_mixture,
    use_row_z,
)
from .tasks import Example, Task, get_task
from .training import TrainConfig, TrainResult, train

__all__ = [
    "errors",
    "io",
    "RoutekitError",
    "EvalResult",
    "evaluate",
    "generate",
    "load_model",
    "resolve_model",
    "world",
    "training",
    "Example",
    "Task",
    "get_task",
    "TrainConfig",
    "TrainResult",
    "train",
    "ProxyExpert",
    "ProxyExpertConfig",
    "ProxyLogitsProcessor",
    "check_vocab_compatible",
    "proxy_generate",
    "RowMixture",
    "SVFConfig",
    "SVFExpert",
    "SVFLinear",
    "clear_row_z",
    "disable_svf",
    "export_expert",
    "get_svf_model",
    "merge",
    "mix_experts",
    "row_z_from_mixture",
    "set_expert",
    "set_row_mixture",
    "set_row_z",
    "svf_layers",
    "unmerge",
    "unwrap_svf_model",
    "use_row_mixture",
    "use_row_z",
]
__version__ = "0.1.0"
