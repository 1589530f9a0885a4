"""Statistics the comparison's verdicts rest on: mean ± std over seeds, bootstrap intervals
over prompts and seeds, and a verdict that commits only when the interval does.

Scores come as a (seeds × prompts) array: row s holds one number per prompt (e.g. 1/0 for
a correct answer, or an answer's log-likelihood) from the run with seed s. Both sources of
variation are real, and the design is *crossed*: every seed answers the same prompts. So
each replicate draws the seeds with replacement and, once, the prompts with replacement,
the same prompt draw for every drawn seed, and takes the statistic (the mean by default)
of the resampled array. Drawing prompts afresh within each seed (``crossed=False``, the
nested bootstrap) would treat one prompt's answers under five seeds as five independent
items and narrow the interval whenever prompts differ in difficulty, as they do. A *paired* difference between two
methods resamples the per-prompt differences ``a − b`` (same seed index, same prompt), so
what the two methods share (hard prompts, a lucky seed) cancels out.

A verdict is ``"supported"`` or ``"contradicted"`` only when the interval lies entirely on
one side of the threshold (for an equivalence claim: inside, or entirely outside, the
margin band); otherwise it is ``"inconclusive"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ConfigError

_CHUNK = 500  # bootstrap replicates drawn per block
Verdict = Literal["supported", "contradicted", "inconclusive"]
Direction = Literal["greater", "less", "equal"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_seeds: int
    n_prompts: int

    def excludes(self, value: float) -> bool:
        return value < self.low or value > self.high

    def as_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "level": self.level, "n_seeds": self.n_seeds, "n_prompts": self.n_prompts}


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1) of per-seed values; std is None for one
    value (one seed says nothing about the spread)."""
    x = _finite(np.asarray(values, dtype=np.float64).reshape(-1), "values")
    if x.size == 0:
        raise ConfigError("mean_std needs at least one value.")
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(x).all():
        raise ConfigError(f"{what} hold non-finite numbers (nan/inf); score every prompt first.")
    return x


def _as_scores(values: Sequence[Sequence[float]] | np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]  # one seed
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ConfigError(
            f"{what} must be a non-empty (seeds x prompts) array, got shape {x.shape}."
        )
    return _finite(x, what)


def _check_boot(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}.")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}.")


def _percentile_interval(
    reps: np.ndarray, estimate: float, level: float, n_seeds: int, n_prompts: int
) -> Interval:
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    # rounding can put a constant's quantiles a hair off the estimate: snap them onto it
    tol = 1e-12 * max(1.0, abs(estimate))
    if math.isclose(low, estimate, rel_tol=0, abs_tol=tol) and math.isclose(
        high, estimate, rel_tol=0, abs_tol=tol
    ):
        low = high = estimate
    return Interval(estimate, float(low), float(high), level, n_seeds, n_prompts)


def _draw(x: np.ndarray, seeds: np.ndarray, rng: np.random.Generator,
          crossed: bool = True) -> np.ndarray:
    """One block of replicates: for each (replicate, drawn seed), that seed's row of ``x``
    at prompts drawn with replacement -> (replicates, seeds, prompts). ``crossed``: one
    prompt draw per replicate, shared by its seeds; else a fresh draw per seed (nested)."""
    shape = (seeds.shape[0], 1 if crossed else seeds.shape[1], x.shape[1])
    prompts = rng.integers(0, x.shape[1], size=shape)
    return x[seeds[:, :, None], prompts]


def bootstrap_interval(
    scores: Sequence[Sequence[float]] | np.ndarray,
    *,
    statistic: Callable[[np.ndarray], float] | None = None,
    level: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
    crossed: bool = True,
) -> Interval:
    """Percentile interval of ``statistic`` (default: the mean) of (seeds × prompts)
    ``scores``, resampling seeds and prompts (crossed: one prompt draw per replicate for
    every drawn seed; ``crossed=False`` draws prompts within each seed). Deterministic for
    ``seed``. ``statistic`` receives one resampled (seeds × prompts) array."""
    x = _as_scores(scores, "scores")
    _check_boot(level, n_boot)
    n_seeds, n_prompts = x.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    estimate = float(x.mean() if statistic is None else statistic(x))
    reps = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):  # bounded memory: _CHUNK replicates at a time
        stop = min(start + _CHUNK, n_boot)
        drawn = _draw(x, seeds[start:stop], rng, crossed)
        if statistic is None:
            reps[start:stop] = drawn.mean(axis=(1, 2))
        else:
            reps[start:stop] = [statistic(r) for r in drawn]
    return _percentile_interval(reps, estimate, level, n_seeds, n_prompts)


def paired_difference(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray,
    *,
    level: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
    crossed: bool = True,
) -> Interval:
    """Interval of mean(a − b) for two methods scored on the same (seeds × prompts)."""
    xa, xb = _as_scores(a, "a"), _as_scores(b, "b")
    if xa.shape != xb.shape:
        raise ConfigError(
            f"a paired difference needs the same seeds and prompts on both sides; shapes "
            f"{xa.shape} and {xb.shape} differ."
        )
    return bootstrap_interval(xa - xb, level=level, n_boot=n_boot, seed=seed, crossed=crossed)


def difference_interval(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray,
    *,
    level: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
    crossed: bool = True,
) -> Interval:
    """Interval of mean(a) − mean(b) for two *different* sets of prompts scored by the same
    seeds: (seeds × n_a) and (seeds × n_b). Each replicate draws the seeds with replacement
    (the same draw for both sides: seed s of ``a`` and of ``b`` come from one run), then
    each side's prompts independently of the other side's (crossed: one draw per side for
    every seed). ``n_prompts`` reports the smaller side."""
    xa, xb = _as_scores(a, "a"), _as_scores(b, "b")
    if xa.shape[0] != xb.shape[0]:
        raise ConfigError(
            f"a difference by seed needs the same seeds on both sides; a has {xa.shape[0]} "
            f"and b {xb.shape[0]}."
        )
    _check_boot(level, n_boot)
    n_seeds = xa.shape[0]
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    reps = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        stop = min(start + _CHUNK, n_boot)
        reps[start:stop] = (_draw(xa, seeds[start:stop], rng, crossed).mean(axis=(1, 2))
                            - _draw(xb, seeds[start:stop], rng, crossed).mean(axis=(1, 2)))
    estimate = float(xa.mean() - xb.mean())
    return _percentile_interval(reps, estimate, level, n_seeds, min(xa.shape[1], xb.shape[1]))


def verdict(
    interval: Interval, direction: Direction = "greater", *, threshold: float = 0.0,
    margin: float | None = None,
) -> Verdict:
    """Whether the interval supports the claim "estimate > threshold" (``greater``),
    "< threshold" (``less``) or "within ±margin of threshold" (``equal``).

    supported: the whole interval is on the claim's side (strictly; inside the band for
    ``equal``); contradicted: the whole interval is on the other side (for ``equal``: entirely
    outside the band); otherwise inconclusive.
    """
    lo, hi = interval.low, interval.high
    if direction == "greater":
        return "supported" if lo > threshold else "contradicted" if hi < threshold else "inconclusive"
    if direction == "less":
        return "supported" if hi < threshold else "contradicted" if lo > threshold else "inconclusive"
    if direction == "equal":
        if margin is None or margin <= 0:
            raise ConfigError(f"an 'equal' claim needs a margin > 0, got {margin}.")
        band_lo, band_hi = threshold - margin, threshold + margin
        if band_lo <= lo and hi <= band_hi:
            return "supported"
        if hi < band_lo or lo > band_hi:
            return "contradicted"
        return "inconclusive"
    raise ConfigError(f"direction must be 'greater', 'less' or 'equal', got {direction!r}.")
