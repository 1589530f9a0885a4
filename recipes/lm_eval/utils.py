"""Functions the task YAMLs beside this file name with ``!function utils.NAME``.

They live in routekit (``routekit.lm_eval``); this file only makes them reachable from the
YAMLs, which lm-eval resolves relative to their own directory.
"""

from routekit.lm_eval.data import check_real, test_docs, world_dataset

__all__ = ["check_real", "test_docs", "world_dataset"]
