"""Generation and evaluation: what a model (with or without experts) says, and how often it is right.

- ``generate``: :func:`generate` (``rk.generate``: texts in, new texts out, left-padded
  batches), :func:`stop_ids`, and the ``ROW_WINDOW`` hook of per-prompt mixtures;
- ``evaluate``: :func:`evaluate` (``rk.evaluate``: a task split's greedy accuracy) and
  :class:`EvalResult`;
- ``proxy``: :func:`proxy_generate` (``rk.proxy_generate``: generation steered by proxy
  experts);
- ``commands``: ``routekit eval``.

The names ``generate`` and ``evaluate`` here are the functions; the modules of the same
names are reached as ``routekit.eval.generate`` only through ``sys.modules`` or
``from routekit.eval.generate import ...``.
"""

from .evaluate import EvalResult, evaluate
from .generate import ROW_WINDOW, generate, stop_ids
from .proxy import proxy_generate

__all__ = ["ROW_WINDOW", "EvalResult", "evaluate", "generate", "proxy_generate", "stop_ids"]
