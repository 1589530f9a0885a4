"""Scoring one trained model of a cell against the base: accuracy, retention, forgetting,
KL, behaviour shares and activation sparsity, through ``routekit.compare``'s metric functions.

- accuracy: greedy ``routekit.evaluate`` on the task's test and ood splits, and on its val
  split where it has one (what chooses rates and α: :mod:`.selection`);
- retention: the environment's knowledge probes (on the world, ``facts`` test: questions
  about entities whose questions never appear in the corpus), accuracy and the mean
  log-likelihood of their reference answers; statement recall accuracy on the probes'
  ``statements`` split where there is one (the world's, as ``routekit.world.measure.measure``
  computes it for the base);
- forgetting: cross-entropy on the environment's held-out text (on the world, see
  :mod:`.world_ref`) after minus before, and KL(base ‖ tuned) on that text and on the task's
  test prompts;
- behaviour shares (correct / systematic wrong / other) on test prompts, where the
  environment labels behaviours (the world's skills);
- activation sparsity per layer on test vs ood prompts (weight-space methods and the base).

A proxy method's model is the base steered at α: accuracy through ``routekit.mixture``
around ``evaluate``, likelihoods through :class:`~.steered.SteeredLM`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from ..eval import evaluate
from ..tasks.base import Task
from .activations import hidden_states, layer_sparsity, prompt_sparsity
from .behaviour import behaviour_shares
from .env import Environment
from .metrics import TextScores, answer_loglik, kl_divergence, text_cross_entropy
from .results import Scores
from .suite import EvalLimits


def _head(xs: list, n: int | None) -> list:
    return xs[:n] if n else xs


class Evaluator:
    """Scores models of one task against one base, reusing what the base's side computes."""

    def __init__(
        self, env: Environment, task: Task, base: nn.Module, tokenizer: PreTrainedTokenizerBase,
        limits: EvalLimits, max_new_tokens: int, heldout: list[str] | None = None,
    ) -> None:
        self.env, self.task, self.base, self.tok = env, task, base, tokenizer
        self.limits, self.max_new_tokens = limits, max_new_tokens
        self.facts = env.probes()
        self.texts = heldout if heldout is not None else env.heldout_text(limits.heldout_text, task)
        self.kl_prompts = _head(task.prompts("test"), limits.kl_prompts)
        self._base_ce: TextScores | None = None

    @property
    def has_behaviour(self) -> bool:
        return self.env.has_behaviour(self.task)

    def base_ce(self) -> TextScores:
        if self._base_ce is None:
            self._base_ce = text_cross_entropy(self.base, self.tok, self.texts)
        return self._base_ce

    def _steering(self, steer: tuple[Any, float] | None) -> contextlib.AbstractContextManager:
        if steer is None:
            return contextlib.nullcontext()
        from ..experts.mixture import mixture

        expert, alpha = steer
        return mixture(self.base, [expert], [alpha], tokenizer=self.tok)

    def _eval(self, model: nn.Module, task: Task, split: str, limit: int | None,
              steer: tuple[Any, float] | None):
        target = self.base if steer is not None else model
        with self._steering(steer):
            return evaluate(target, self.tok, task, split, limit=limit,
                            max_new_tokens=self.max_new_tokens)

    def scores(
        self, model: nn.Module, *, steer: tuple[Any, float] | None = None, is_base: bool = False,
    ) -> Scores:
        """Every scalar metric of ``model`` (or of the base steered by ``steer`` = (expert, α))."""
        lim = self.limits
        likelihood_model = model
        if steer is not None:
            from .steered import SteeredLM

            likelihood_model = SteeredLM(self.base, steer[0], steer[1])
        test = self._eval(model, self.task, "test", lim.test, steer)
        per_prompt: dict[str, list[float]] = {"test": [float(c) for c in test.correct]}
        out: dict[str, Any] = {"test_accuracy": test.accuracy}
        if "val" in self.task.splits:
            val = self._eval(model, self.task, "val", lim.val, steer)
            out["val_accuracy"] = val.accuracy
            per_prompt["val"] = [float(c) for c in val.correct]
        if "ood" in self.task.splits:
            ood = self._eval(model, self.task, "ood", lim.ood, steer)
            out["ood_accuracy"] = ood.accuracy
            per_prompt["ood"] = [float(c) for c in ood.correct]
        if self.facts is not None:
            probes = self._eval(model, self.facts, "test", lim.probes, steer)
            out["probe_accuracy"] = probes.accuracy
            per_prompt["probes"] = [float(c) for c in probes.correct]
            if "statements" in self.facts.splits:
                statements = self._eval(model, self.facts, "statements", lim.statements, steer)
                out["statement_accuracy"] = statements.accuracy
            ll = answer_loglik(likelihood_model, self.tok,
                               _head(self.facts.examples("test"), lim.probes))
            out["probe_loglik"] = ll.per_text()
            per_prompt["probe_loglik"] = list(ll.sums)
        before = self.base_ce()
        if is_base:
            out.update(heldout_ce=before.per_token(), forgetting=0.0, kl_text=0.0, kl_prompts=0.0)
        else:
            after = text_cross_entropy(likelihood_model, self.tok, self.texts)
            out["heldout_ce"] = after.per_token()
            out["forgetting"] = after.per_token() - before.per_token()
            out["kl_text"] = kl_divergence(self.base, likelihood_model, self.tok, self.texts).per_token()
            out["kl_prompts"] = kl_divergence(
                self.base, likelihood_model, self.tok, self.kl_prompts).per_token()
        if self.has_behaviour:
            labels = self.env.behaviour_labels(
                self.task, _head(self.task.examples("test"), lim.test), test.completions)
            out["behaviour"] = behaviour_shares(labels)
            per_prompt["systematic"] = [float(lab == "systematic") for lab in labels]
        return Scores(alpha=None if steer is None else steer[1], per_prompt=per_prompt, **out)

    def behaviour(self, model: nn.Module, steer: tuple[Any, float] | None = None) -> dict[str, float] | None:
        """Behaviour shares on the first ``limits.behaviour`` test prompts (None off the world's skills)."""
        if not self.has_behaviour:
            return None
        res = self._eval(model, self.task, "test", self.limits.behaviour, steer)
        examples = _head(self.task.examples("test"), self.limits.behaviour)
        return behaviour_shares(self.env.behaviour_labels(self.task, examples, res.completions))

    def activations(
        self, model: nn.Module
    ) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]] | None:
        """Activation sparsity on test and ood prompts (None without an ood split): per split
        the per-layer figures, and each prompt's values averaged over layers keyed
        ``act_<metric>_<split>`` (for a ``Scores.per_prompt``: claim (f) resamples them)."""
        if "ood" not in self.task.splits:
            return None
        n = self.limits.activations
        layers, per_prompt = {}, {}
        for split in ("test", "ood"):
            states = hidden_states(model, self.tok, _head(self.task.prompts(split), n))
            layers[split] = [asdict(s) for s in layer_sparsity(states)]
            for metric, values in prompt_sparsity(states).items():
                per_prompt[f"act_{metric}_{split}"] = values
        return layers, per_prompt
