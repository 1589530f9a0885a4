"""Gradient-free searches over a weight vector: cross-entropy method and CMA-ES.

Both are pure functions of a black-box, *batched* objective: it takes a population
(P, D) of candidates and returns, per candidate, a score (P,) or lexicographic keys (P, M)
(higher is better; the first column decides, later columns break its ties, as the few-shot
router breaks accuracy ties with log-likelihood). Batching lets an objective evaluate a whole
population in one pass (every candidate is a row mixture). Both start by scoring ``x0`` and
return the best candidate ever scored, so the result is never worse than the start. With the
same seed and a deterministic objective both return the same result.

The cross-entropy method is Transformer²'s: sample a population around a mean, keep the
elite share, refit mean and spread to the elites. CMA-ES (``cma`` package) also adapts a full
covariance; it ranks a population only by order, so the lexicographic keys are handed to it
as ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

Objective = Callable[[np.ndarray], np.ndarray]


@dataclass
class SearchResult:
    """The best candidate, its keys, and how the search went."""

    x: np.ndarray
    keys: tuple[float, ...]
    start_keys: tuple[float, ...]
    evaluations: int
    history: list[tuple[float, ...]] = field(default_factory=list)  # best keys after each iteration

    @property
    def score(self) -> float:
        return self.keys[0]


def _keys(objective: Objective, pop: np.ndarray) -> np.ndarray:
    out = np.asarray(objective(pop), dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2 or out.shape[0] != pop.shape[0]:
        raise ConfigError(
            f"the objective returned shape {out.shape} for {pop.shape[0]} candidates; it must "
            "return one score (P,) or one row of keys (P, M) per candidate."
        )
    if not np.isfinite(out).all():
        raise ConfigError(
            "the objective returned NaN or inf scores; it must return finite scores."
        )
    return out


def _order(keys: np.ndarray) -> np.ndarray:
    """Indices from best to worst (first key decides, later keys break ties; stable)."""
    return np.lexsort(tuple(-keys[:, j] for j in reversed(range(keys.shape[1]))))


def _better(a: np.ndarray, b: np.ndarray) -> bool:
    for x, y in zip(a, b):
        if x != y:
            return bool(x > y)
    return False


def _check(x0: Sequence[float], population: int, iterations: int,
           bounds: tuple[float, float] | None) -> np.ndarray:
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    if x0.size == 0 or not np.isfinite(x0).all():
        raise ConfigError(f"the start point must be a non-empty finite vector, got {x0.tolist()}.")
    if population < 2 or iterations < 0:
        raise ConfigError(
            f"population must be >= 2 and iterations >= 0, got {population} and {iterations}."
        )
    if bounds is not None:
        lo, hi = bounds
        if not lo < hi:
            raise ConfigError(f"bounds must be (low, high) with low < high, got {bounds}.")
        if (x0 < lo).any() or (x0 > hi).any():
            raise ConfigError(f"the start point {x0.tolist()} lies outside the bounds {bounds}.")
    return x0


def cem_search(
    objective: Objective,
    x0: Sequence[float],
    *,
    population: int = 32,
    elite_share: float = 0.2,
    iterations: int = 50,
    sigma0: float = 0.3,
    min_sigma: float = 1e-3,
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
) -> SearchResult:
    """Cross-entropy method: N(mean, diag σ²) → score → mean, σ of the elites; ``x0`` first.

    Evaluations: 1 + population × iterations. Candidates are clipped to ``bounds``.
    """
    x0 = _check(x0, population, iterations, bounds)
    if not 0 < elite_share <= 1:
        raise ConfigError(f"elite_share must be in (0, 1], got {elite_share}.")
    n_elite = max(1, int(round(elite_share * population)))
    rng = np.random.default_rng(seed)
    best_x, best_k = x0.copy(), _keys(objective, x0[None])[0]
    start = tuple(best_k.tolist())
    mean, sigma = x0.copy(), np.full_like(x0, float(sigma0))
    history: list[tuple[float, ...]] = []
    for _ in range(iterations):
        pop = mean + sigma * rng.standard_normal((population, x0.size))
        if bounds is not None:
            pop = np.clip(pop, *bounds)
        keys = _keys(objective, pop)
        order = _order(keys)
        if _better(keys[order[0]], best_k):
            best_x, best_k = pop[order[0]].copy(), keys[order[0]].copy()
        elites = pop[order[:n_elite]]
        mean, sigma = elites.mean(0), np.maximum(elites.std(0), min_sigma)
        history.append(tuple(best_k.tolist()))
    return SearchResult(best_x, tuple(best_k.tolist()), start, 1 + population * iterations, history)


def cmaes_search(
    objective: Objective,
    x0: Sequence[float],
    *,
    population: int = 32,
    iterations: int = 50,
    sigma0: float = 0.3,
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
) -> SearchResult:
    """CMA-ES through the ``cma`` package; same budget as :func:`cem_search` for the same
    population and iterations (1 + population × iterations evaluations)."""
    try:
        import cma
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("CMA-ES needs the 'cma' package: pip install cma.") from e
    x0 = _check(x0, population, iterations, bounds)
    # cma seeds numpy's global generator (0 would mean "from the clock"): keep the caller's state.
    saved = np.random.get_state()
    try:
        opts = {"popsize": population, "seed": seed % (2**31 - 2) + 1, "verbose": -9,
                "maxiter": max(iterations, 1), "tolfun": 0, "tolx": 0, "tolfunhist": 0,
                "tolflatfitness": iterations + 1, "tolstagnation": iterations + 1}
        if bounds is not None:
            opts["bounds"] = [bounds[0], bounds[1]]
        best_x, best_k = x0.copy(), _keys(objective, x0[None])[0]
        start = tuple(best_k.tolist())
        history: list[tuple[float, ...]] = []
        if x0.size == 1:  # cma needs two dimensions; search a padded copy, ignore the pad
            es = cma.CMAEvolutionStrategy(np.append(x0, 0.0), sigma0, opts)
        else:
            es = cma.CMAEvolutionStrategy(x0, sigma0, opts)
        for _ in range(iterations):
            cand = np.asarray(es.ask(), dtype=np.float64)
            pop = cand[:, : x0.size]
            if bounds is not None:
                pop = np.clip(pop, *bounds)
            keys = _keys(objective, pop)
            order = _order(keys)
            rank = np.empty(population)
            rank[order] = np.arange(population)
            # Equal keys get equal ranks, so ties are not broken by position.
            for i in range(1, population):
                if np.array_equal(keys[order[i]], keys[order[i - 1]]):
                    rank[order[i]] = rank[order[i - 1]]
            es.tell(list(cand), rank.tolist())
            if _better(keys[order[0]], best_k):
                best_x, best_k = pop[order[0]].copy(), keys[order[0]].copy()
            history.append(tuple(best_k.tolist()))
    finally:
        np.random.set_state(saved)
    return SearchResult(best_x, tuple(best_k.tolist()), start, 1 + population * iterations, history)


SEARCHES = {"cem": cem_search, "cmaes": cmaes_search}
