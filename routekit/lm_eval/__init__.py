"""routekit inside lm-evaluation-harness: the ``routekit`` lm-eval model and its task helpers.

Importing this package registers :class:`RoutekitLM` with lm-eval as ``routekit`` (lm-eval
0.4 has no plugin entry point for models, so it must be imported first):

- ``python -m routekit.lm_eval --model routekit --model_args model=world --tasks ...`` runs
  lm-eval's own command line with the model registered;
- ``routekit eval --lm-eval TASKS --model-args ...`` prints lm-eval's table;
- ``lm_eval.simple_evaluate(model=RoutekitLM(...), ...)`` from Python.

Needs the optional extra: ``pip install 'routekit[lmeval]'``.
"""

from .data import check_real, export_jsonl, task_records, test_docs, world_dataset
from .model import RoutekitLM
from .run import run_tasks, table

__all__ = [
    "RoutekitLM",
    "run_tasks",
    "table",
    "check_real",
    "export_jsonl",
    "task_records",
    "test_docs",
    "world_dataset",
]
