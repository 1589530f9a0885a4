"""The comparison harness's building blocks.

- :mod:`.metrics`: answer log-likelihood, cross-entropy, PEFT's forgetting, KL(base ‖ tuned);
- :mod:`.behaviour`: shares of correct / systematic-wrong / other answers on world skills;
- :mod:`.activations`: hidden-state sparsity per layer (arXiv:2603.03415's metrics);
- :mod:`.stats`: mean ± std over seeds, bootstrap intervals over prompts and seeds, verdicts;
- the harness (``routekit compare``): :mod:`.suite` (YAML suites), :mod:`.methods`, :mod:`.cells`,
  :mod:`.runner` and :mod:`.executors` (local processes or Ray), :mod:`.results` (the
  validated ``results.json``), :mod:`.claims`, :mod:`.report` and :mod:`.plots`.
"""

from .activations import (
    LayerSparsity,
    activation_sparsity,
    effective_rank_over_d,
    hidden_states,
    l1_of_normalised,
    top_k_energy_share,
)
from .behaviour import BEHAVIOURS, behaviour_shares, classify_behaviours, systematic_wrong_answer
from .metrics import TextScores, answer_loglik, forgetting, kl_divergence, text_cross_entropy
from .stats import Interval, bootstrap_interval, mean_std, paired_difference, verdict

__all__ = [
    "BEHAVIOURS", "Interval", "LayerSparsity", "TextScores", "activation_sparsity",
    "answer_loglik", "behaviour_shares", "bootstrap_interval", "classify_behaviours",
    "effective_rank_over_d", "forgetting", "hidden_states", "kl_divergence", "l1_of_normalised",
    "mean_std", "paired_difference", "systematic_wrong_answer", "text_cross_entropy",
    "top_k_energy_share", "verdict",
]
