"""routekit: composable routing adapters (SVF experts, proxy-tuning, routers) for HF causal LMs."""

from . import errors, io
from .errors import RoutekitError
from .eval import EvalResult, evaluate, generate
from .models import load_model
from .tasks.base import Example, Task

__all__ = [
    "errors",
    "io",
    "RoutekitError",
    "EvalResult",
    "evaluate",
    "generate",
    "load_model",
    "Example",
    "Task",
]
__version__ = "0.1.0"
