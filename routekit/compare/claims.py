"""The verdict on each claim (a)–(h), with the numbers it rests on, from a run's results.

Every comparison is made at each method's best learning rate (see :mod:`.suite`) and its
best α for proxy methods, over the seeds run there, with a 95% bootstrap interval from
:mod:`.stats` (seeds and prompts, crossed: every seed answers the same prompts). A verdict is "supported" or
"contradicted" only when its interval excludes the other side (``stats.verdict``);
otherwise, or when the cells it needs are missing, it is "inconclusive". The base is
deterministic (greedy decoding), so its one cell pairs with every seed of a method.

=== =================================================================================
(a) RL (bf16 storage, as arXiv:2505.11711) leaves most parameters bitwise unchanged
    (share > 0.5), its changed matrices are nearly full rank (mean rank fraction > 0.9)
    and two seeds' changed sets overlap more than random masks of the same densities.
    Only ``full_rl_bf16`` counts: float32 RL does not stand in for bf16 storage.
(b) The sparsity comes from bf16 storage: bf16 RL's unchanged share exceeds float32 RL's
    (paired by seed).
(c) Subnetwork RL matches the RL it took its mask from: test accuracy within ±5 points.
    Not applicable when the mask covers more than ``MAX_MASK_DENSITY`` of the entries (the
    "subnetwork" is then the whole model and the claim cannot fail). The mask comes from
    the same seed's run, so a match is evidence about that run only (``SAME_RUN_MASK``);
    trained without gradient clipping, nothing couples the two runs: not applicable.
(d) Small (SVF) RL updates teach *when*, not *how*: the gain over the base is smaller on
    ood prompts than on test prompts (paired prompt by prompt where the environment says
    ood prompt i asks about test prompt i's item, as hop's does; otherwise the two sets are
    resampled independently).
    Only ``svf_rl`` counts: a larger update does not stand in for a small one.
(e) RL collapses pretraining's answer formats onto one (arXiv:2504.07912). The world's
    corpus demonstrates two behaviours per skill, the correct answer and one systematic
    wrong answer; "other" answers show neither. The claim: among the test answers that show
    one of the two, their mix is more concentrated after RL than the base's, measured as the
    mix's entropy over log 2 (paired by prompt). The share of "other" answers does not enter,
    so an accuracy gain drawn from "other" answers, or one that keeps the systematic answer
    in proportion, is not a collapse. Not applicable when the base shows one of the two
    behaviours only (rev's base never copies the word unreversed): there is no mix to
    collapse, and any change would be the accuracy gain renamed. The entropy at each
    behaviour checkpoint over training is reported beside.
(f) Hidden states are sparser on ood prompts: the base's top-5% energy share on ood minus
    test prompts (each prompt's last-token value averaged over layers), bootstrapped over
    the two sets of prompts independently; each trained method at its best rate is tallied
    the same way over its seeds and prompts, beside.
(g) Routing-only methods keep knowledge, full fine-tuning loses it, LoRA in between: the
    probes' answer log-likelihood minus the base's, per probe. "Keeps" means within
    ``KEEP_MARGIN`` nats of the base: SVF SFT (and proxy SFT) keep it, full SFT loses more
    than the margin, SVF SFT and proxy SFT above full SFT, LoRA SFT above full SFT and below
    SVF SFT. An ordering is contradicted only when its interval lies beyond the margin on
    the other side.
(h) Forgetting tracks KL(base‖tuned) on the task's prompts: Pearson r > 0.5 over trained
    cells' variants (α), with a cluster bootstrap that resamples trained models (method,
    task, seed), so α variants of one model never count as independent points; per task and
    pooled.

Per-seed figures (shares, ranks, overlaps) commit a verdict only with ``MIN_SEEDS`` seeds or
more; with fewer, their range over the seeds is printed and labelled as a range, not an
interval.
=== =================================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .cells import best_lrs
from .env.world import WORLD_PAIRED_OOD
from .results import CellRecord, Results, Scores
from .stats import Interval, bootstrap_interval, difference_interval, paired_difference, verdict
from .suite import Suite

RL_ANY = ("full_rl", "full_rl_bf16", "svf_rl", "lora_rl", "subnet_rl")
NOT_APPLICABLE = "not applicable"
MAX_MASK_DENSITY = 0.9  # (c): a mask denser than this is (nearly) the whole model
MIN_SEEDS = 5  # per-seed figures: a bootstrap over fewer seed values is about [min, max]
KEEP_MARGIN = 0.05  # (g): nats of mean probe answer log-likelihood that count as "kept"
BEHAVIOURS = ("correct", "systematic", "other")


@dataclass
class Claim:
    """One claim's verdict and the numbers it rests on."""

    letter: str
    text: str
    verdict: str = "inconclusive"
    numbers: list[str] = field(default_factory=list)
    reason: str = ""

    def line(self) -> str:
        nums = "; ".join(self.numbers)
        why = f" ({self.reason})" if self.reason else ""
        return f"**({self.letter})** {self.text} — **{self.verdict}**{why}. {nums}".rstrip()


def _fmt(iv: Interval, pct: bool = False, units: tuple[str, str] = ("seed", ""),
         signed: bool = True) -> str:
    """estimate [low, high] (n seeds × m prompts); ``units`` names the rows and columns;
    ``signed`` writes the sign of differences (not of shares or ranks)."""
    k, unit = (100.0, " pts") if pct else (1.0, "")
    f = "+.3g" if signed else ".3g"
    n = f"{iv.n_seeds} {units[0]}{'s' if iv.n_seeds > 1 else ''}"
    if iv.n_prompts > 1:
        n += f" × {iv.n_prompts}" + (f" {units[1]}" if units[1] else "")
    return f"{iv.estimate * k:{f}}{unit} [{iv.low * k:{f}}, {iv.high * k:{f}}] ({n})"


def _seed_verdict(iv: Interval, direction: str, threshold: float = 0.0) -> str:
    """A verdict on a per-seed figure: it commits only with ``MIN_SEEDS`` seeds or more (a
    percentile bootstrap over 2–4 values is about their [min, max], not a 95% interval)."""
    return verdict(iv, direction, threshold=threshold) if iv.n_seeds >= MIN_SEEDS else "inconclusive"


def _seed_figure(values: Sequence[float], signed: bool = False, units: str = "seed") -> tuple[Interval, str]:
    """A per-seed figure's bootstrap interval and its label: "[low, high] (n seeds)" from
    ``MIN_SEEDS`` seeds on, otherwise the plain range, labelled as one."""
    iv = bootstrap_interval(_per_seed(values))
    f = "+.3g" if signed else ".3g"
    n = len(values)
    if n >= MIN_SEEDS:
        return iv, _fmt(iv, units=(units, ""), signed=signed)
    lo, hi = min(values), max(values)
    plural = "s" if n > 1 else ""
    return iv, (f"{iv.estimate:{f}} (range over {n} {units}{plural} [{lo:{f}}, {hi:{f}}]; "
                f"fewer than {MIN_SEEDS}: no interval, no verdict)")


class View:
    """Results arranged by (method, task): the best lr's cells over seeds, and the base."""

    def __init__(self, results: Results) -> None:
        self.results = results
        self.suite = Suite.model_validate(results.suite)
        self.records = {c.cell_id: c for c in results.cells}
        self.best = best_lrs(self.suite, self.records)
        # what the run's environment has (results written before it was recorded: the world's)
        self.env = results.environment or {"kind": "world", "paired_ood": sorted(WORLD_PAIRED_OOD),
                                           "behaviour": True, "proxy": True}

    def paired_ood(self, task: str) -> bool:
        """Whether the environment pairs ``task``'s ood prompt i with its test prompt i."""
        return task in self.env.get("paired_ood", [])

    def lacks_ood(self, task: str) -> bool:
        """Whether the environment records that ``task`` has no ood split."""
        return "ood" in self.env and task not in self.env["ood"]

    def cells(self, method: str, task: str) -> list[CellRecord]:
        """The method's cells at its best lr on ``task``, one per seed, in seed order."""
        lr = self.best.get((method, task))
        if method == "base":
            return [c for c in self.results.cells if c.key.method == "base" and c.key.task == task][:1]
        if lr is None:
            return []
        return sorted((c for c in self.results.cells if c.key.method == method
                       and c.key.task == task and c.key.lr == lr), key=lambda c: c.key.seed)

    def base(self, task: str) -> Scores | None:
        cells = self.cells("base", task)
        return cells[0].best() if cells else None

    def rows(self, method: str, task: str, metric: str) -> np.ndarray | None:
        """(seeds × prompts) per-prompt values of the best variant of each seed's cell."""
        rows = [c.best().per_prompt.get(metric) for c in self.cells(method, task)]
        if not rows or any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
            return None
        return np.asarray(rows, dtype=float)

    def gain_rows(self, method: str, task: str, metric: str) -> np.ndarray | None:
        """Per prompt, the method's value minus the base's (the base repeated per seed)."""
        tuned = self.rows(method, task, metric)
        base = self.rows("base", task, metric)
        if tuned is None or base is None or tuned.shape[1] != base.shape[1]:
            return None
        return tuned - base


def _first(view: View, methods: Sequence[str], task: str) -> str | None:
    return next((m for m in methods if view.cells(m, task)), None)


def _combine(parts: Sequence[str]) -> str:
    if parts and all(p == "supported" for p in parts):
        return "supported"
    if any(p == "contradicted" for p in parts):
        return "contradicted"
    return "inconclusive"


def _per_seed(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=float)[:, None]


def claim_a(view: View, task: str) -> Claim:
    c = Claim("a", "RL updates a small subnetwork, nearly full rank, overlapping across seeds "
                   "more than chance")
    m = "full_rl_bf16"
    cells = [x for x in view.cells(m, task) if x.structure]
    if not cells:
        c.verdict = NOT_APPLICABLE
        c.reason = ("the claim is about bf16 storage and needs full_rl_bf16 cells; float32 "
                    "full_rl does not stand in for it")
        return c
    unchanged, label = _seed_figure([x.structure.share_bitwise_unchanged for x in cells])
    parts = [_seed_verdict(unchanged, "greater", threshold=0.5)]
    c.numbers.append(f"{m} at its best lr {cells[0].key.lr:g}: bitwise unchanged {label}")
    ranks = [x.structure.mean_rank_fraction for x in cells if x.structure.mean_rank_fraction is not None]
    if ranks:
        rk, label = _seed_figure(ranks)
        parts.append(_seed_verdict(rk, "greater", threshold=0.9))
        c.numbers.append(f"mean rank fraction of changed matrices {label}")
    ov = [o for o in view.results.overlaps if o.method == m and o.task == task
          and o.lr == cells[0].key.lr and o.jaccard is not None and o.expected_jaccard is not None]
    if ov:
        excess, label = _seed_figure([o.jaccard - o.expected_jaccard for o in ov], signed=True,
                                     units="seed pair")
        parts.append(_seed_verdict(excess, "greater"))
        c.numbers.append(f"Jaccard overlap across seeds minus random expectation {label}")
    else:
        parts.append("inconclusive")
        c.numbers.append("no two seeds to overlap")
    gain = view.gain_rows(m, task, "test")
    if gain is not None:
        c.numbers.append(f"its test gain {_fmt(bootstrap_interval(gain), pct=True)}")
    # sparsity depends on the rate: the whole sweep on its first seed, with each rate's gain
    base = view.base(task)
    first = min(x.key.seed for x in cells)
    sweep = sorted((x for x in view.results.cells if x.key.method == m and x.key.task == task
                    and x.key.seed == first and x.structure), key=lambda x: x.key.lr)
    if len(sweep) > 1 and base is not None:
        c.numbers.append(f"sweep on seed {first}: " + ", ".join(
            f"lr {x.key.lr:g} {x.structure.share_bitwise_unchanged:.3f} unchanged, gain "
            f"{100 * (x.best().test_accuracy - base.test_accuracy):+.1f} pts" for x in sweep))
    c.verdict = _combine(parts)
    return c


def claim_b(view: View, task: str) -> Claim:
    c = Claim("b", "update sparsity comes from bf16 storage and vanishes with float32 master weights")
    bf, fp = view.cells("full_rl_bf16", task), view.cells("full_rl", task)
    bf = {x.key.seed: x for x in bf if x.structure}
    fp = {x.key.seed: x for x in fp if x.structure}
    seeds = sorted(set(bf) & set(fp))
    if not seeds:
        c.reason = "needs full_rl and full_rl_bf16 cells on the same seeds"
        return c
    diff, d_label = _seed_figure([bf[s].structure.share_bitwise_unchanged
                                  - fp[s].structure.share_bitwise_unchanged for s in seeds],
                                 signed=True)
    fp_share, fp_label = _seed_figure([fp[s].structure.share_bitwise_unchanged for s in seeds])
    c.verdict = _combine([_seed_verdict(diff, "greater"),
                          _seed_verdict(fp_share, "less", threshold=0.05)])
    c.numbers += [f"unchanged share bf16 − fp32 {d_label}",
                  f"fp32 unchanged {fp_label} (vanishes: < 0.05)"]
    for name, method in (("bf16", "full_rl_bf16"), ("fp32", "full_rl")):
        g = view.gain_rows(method, task, "test")
        if g is not None:
            c.numbers.append(f"{name} test gain {_fmt(bootstrap_interval(g), pct=True)}")
    return c


# What (c)'s test can show, printed with its numbers ({} is what couples the two runs).
SAME_RUN_MASK = ("each mask is every entry its own seed's run changed, so the two runs part "
                 "only through what couples entries ({}): a match says the frozen entries "
                 "carried no update there, not that a mask found in another run suffices")


def _grad_clips(cells: list[CellRecord]) -> set[float | None]:
    """The gradient-clipping norms the cells trained with (None: no clipping), from the
    cells that kept their train config."""
    return {x.train_config.get("grad_clip") for x in cells if x.train_config is not None}


def claim_c(view: View, task: str) -> Claim:
    c = Claim("c", "training only the subnetwork matches full RL")
    src = view.suite.subnet_from
    sub, full = view.rows("subnet_rl", task, "test"), None
    subnet_cells = view.cells("subnet_rl", task)
    dens = [x.mask_density for x in subnet_cells if x.mask_density is not None]
    if dens and max(dens) > MAX_MASK_DENSITY:
        c.verdict = NOT_APPLICABLE
        c.reason = (f"the masks from {src} cover {max(dens):.3g} of the entries (> "
                    f"{MAX_MASK_DENSITY:g}): the subnetwork is (nearly) the whole model, so "
                    "matching full RL cannot fail" + ("; float32 RL changes almost every entry, "
                                                     "use subnet_from: full_rl_bf16"
                                                     if src == "full_rl" else ""))
        c.numbers.append(f"mask density {np.mean(dens):.3g}")
        return c
    clips = _grad_clips(subnet_cells)
    if subnet_cells and clips == {None}:
        c.verdict = NOT_APPLICABLE
        c.reason = ("trained without gradient clipping, nothing couples the entries: outside "
                    f"the mask the {src} run moved nothing, so the subnetwork run repeats it "
                    "and matching cannot fail")
        return c
    if subnet_cells:
        lr = subnet_cells[0].key.lr
        full_cells = sorted((x for x in view.results.cells if x.key.method == src
                             and x.key.task == task and x.key.lr == lr
                             and x.key.seed in {s.key.seed for s in subnet_cells}),
                            key=lambda x: x.key.seed)
        if len(full_cells) == len(subnet_cells):
            full = np.asarray([x.best().per_prompt["test"] for x in full_cells], dtype=float)
    if sub is None or full is None or sub.shape != full.shape:
        c.reason = f"needs subnet_rl cells and {src} cells at the same lr and seeds"
        return c
    d = paired_difference(sub, full)
    c.verdict = verdict(d, "equal", margin=0.05)
    base = view.rows("base", task, "test")
    if base is not None and base.shape[1] == full.shape[1]:
        # the gain of the runs the masks came from (subnet_rl's lr), not of src's best lr
        g = bootstrap_interval(full - base)
        c.numbers.append(f"{src} test gain at lr {lr:g} {_fmt(g, pct=True)}")
        if verdict(g, "greater") != "supported":
            c.verdict, c.reason = "inconclusive", f"{src} gained nothing for the subnetwork to match"
    c.numbers.insert(0, f"subnet_rl − {src} test accuracy {_fmt(d, pct=True)} (margin ±5 pts)")
    if dens:
        c.numbers.append(f"mask density {np.mean(dens):.3g}")
    norms = ", ".join(f"{x:g}" for x in sorted(x for x in clips if x is not None))
    c.numbers.append(SAME_RUN_MASK.format("gradient clipping's global norm"
                                          + (f", at {norms}" if norms else "")))
    return c


def claim_d(view: View, task: str) -> Claim:
    c = Claim("d", "small RL updates teach when, not how: the gain drops on ood prompts")
    m = "svf_rl"
    if not view.cells(m, task):
        c.verdict = NOT_APPLICABLE
        c.reason = ("the claim is about small (SVF) updates and needs svf_rl cells; full or "
                    "LoRA RL does not stand in for it")
        return c
    if view.lacks_ood(task):
        c.verdict, c.reason = NOT_APPLICABLE, f"the environment's task {task!r} has no ood split"
        return c
    test = view.gain_rows(m, task, "test")
    ood = view.gain_rows(m, task, "ood")
    if test is None or ood is None:
        c.reason = "needs svf_rl's cells and the base with test and ood splits"
        return c
    g_test = bootstrap_interval(test)
    if view.paired_ood(task) and test.shape == ood.shape:
        d = paired_difference(test, ood)
    else:  # different prompts on the two sides: resample each side's own
        d = difference_interval(test, ood)
    c.verdict = _combine([verdict(g_test, "greater"), verdict(d, "greater")])
    if verdict(g_test, "greater") != "supported":
        c.reason = "no test gain to lose"
        c.verdict = "inconclusive"
    c.numbers += [f"{m}: test gain {_fmt(g_test, pct=True)}",
                  f"ood gain {_fmt(bootstrap_interval(ood), pct=True)}",
                  f"test − ood gain {_fmt(d, pct=True)}"]
    return c


def format_entropy(shares: Sequence[float]) -> float:
    """Entropy of the mix of the two pretraining behaviours (correct, systematic) among the
    answers that show one, over log 2, from counts or shares in :data:`BEHAVIOURS` order
    ("other" is ignored): 0 when one behaviour takes every such answer, 1 for an even mix.
    0 when no answer shows either (no mix at all)."""
    p = np.asarray(shares, dtype=float)[:2]
    if p.sum() <= 0:
        return 0.0
    p = p[p > 0] / p.sum()
    return float(max(0.0, -(p * np.log(p)).sum() / np.log(2)))  # never -0.0


def _behaviour_codes(correct: np.ndarray, systematic: np.ndarray) -> np.ndarray:
    """Per (seed, prompt): 0 correct, 1 systematic, 2 other."""
    return np.where(correct > 0.5, 0, np.where(systematic > 0.5, 1, 2))


def claim_e(view: View, task: str) -> Claim:
    c = Claim("e", "RL collapses the pretraining answer formats onto one")
    if not view.env.get("behaviour", True):
        c.verdict = NOT_APPLICABLE
        c.reason = "the environment has no behaviour labels (correct / systematic / other)"
        return c
    m = _first(view, RL_ANY, task)
    if m is None:
        c.reason = "needs an RL method's cells"
        return c
    tuned_c, tuned_s = view.rows(m, task, "test"), view.rows(m, task, "systematic")
    base_c, base_s = view.rows("base", task, "test"), view.rows("base", task, "systematic")
    if any(x is None for x in (tuned_c, tuned_s, base_c, base_s)) or tuned_c.shape[1] != base_c.shape[1]:
        c.reason = "needs behaviour labels (a world skill task) for the base and an RL method"
        return c
    tuned = _behaviour_codes(tuned_c, tuned_s)
    base_codes = _behaviour_codes(base_c, base_s)
    t_sh = np.bincount(tuned.reshape(-1), minlength=3) / tuned.size
    b_sh = np.bincount(base_codes[:1].reshape(-1), minlength=3) / base_codes.shape[1]
    fmt = lambda sh: " / ".join(f"{n} {v:.2f}" for n, v in zip(BEHAVIOURS, sh))  # noqa: E731
    shown = f"{m}: behaviour shares {fmt(t_sh)} vs base {fmt(b_sh)}"
    absent = [b for b, share in zip(BEHAVIOURS[:2], b_sh[:2]) if share == 0]
    if absent:
        c.verdict = NOT_APPLICABLE
        c.reason = (f"the base's answers never show the {absent[0]} behaviour, so there is no "
                    "mix of pretraining behaviours to collapse: any change would be the "
                    "accuracy gain renamed")
        c.numbers.append(shown)
        return c
    base = np.repeat(base_codes, tuned.shape[0], axis=0)
    # one code per (seed, prompt) holds both sides, so the bootstrap keeps prompts paired
    joint = (3 * tuned + base).astype(float)

    def entropy_change(x: np.ndarray) -> float:
        k = x.astype(int)
        shares = lambda codes: np.bincount(codes.reshape(-1), minlength=3)  # noqa: E731
        return format_entropy(shares(k // 3)) - format_entropy(shares(k % 3))

    d = bootstrap_interval(joint, statistic=entropy_change, n_boot=2000)
    c.verdict = verdict(d, "less")
    correct_of = lambda sh: sh[0] / max(sh[0] + sh[1], 1e-12)  # noqa: E731
    c.numbers += [shown,
                  f"correct among correct + systematic answers {correct_of(t_sh):.3g} vs base "
                  f"{correct_of(b_sh):.3g}; entropy of that mix / log 2 "
                  f"{format_entropy(t_sh):.3g} vs base {format_entropy(b_sh):.3g}, tuned − base "
                  f"{_fmt(d)} (below 0 = collapsed toward one behaviour)"]
    history = [(h.get("step"), [h.get(b, 0.0) for b in BEHAVIOURS])
               for cell in view.cells(m, task)[:1] for h in cell.behaviour_history]
    if history:
        c.numbers.append(f"over training (seed {view.cells(m, task)[0].key.seed}): " + ", ".join(
            f"step {step:g} {format_entropy(sh):.3g}" for step, sh in history if sum(sh) > 0))
    return c


def claim_f(view: View, task: str) -> Claim:
    c = Claim("f", "hidden states grow sparser on ood prompts (top-5% energy share)")

    def sides(method: str, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
        t = view.rows(method, task, f"act_{metric}_test")
        o = view.rows(method, task, f"act_{metric}_ood")
        return None if t is None or o is None or t.shape[0] != o.shape[0] else (o, t)

    if view.lacks_ood(task):
        c.verdict, c.reason = NOT_APPLICABLE, f"the environment's task {task!r} has no ood split"
        return c
    base = sides("base", "top_k_energy")
    if base is None:
        c.reason = ("needs per-prompt activation measurements of the base (a task with an ood "
                    "split; results written before they were kept lack them: rerun the cells)")
        return c
    iv = difference_interval(*base)
    c.verdict = verdict(iv, "greater")
    c.numbers.append(f"base: ood − test top-5% energy share {_fmt(iv, units=('model', 'prompts'))}")
    l1 = sides("base", "l1_normalised")
    if l1 is not None:
        c.numbers.append("base: ood − test L1 of the normalised state (lower = sparser) "
                         f"{_fmt(difference_interval(*l1), units=('model', 'prompts'))}")
    cells = view.cells("base", task)
    if cells and cells[0].activations:
        t, o = cells[0].activations["test"], cells[0].activations["ood"]
        erank = np.mean([lo["effective_rank_over_d"] - lt["effective_rank_over_d"]
                         for lt, lo in zip(t, o)])
        c.numbers.append(f"base: ood − test effective rank / d (lower = sparser; a set's "
                         f"figure, no interval) {erank:+.3g} over {len(t)} layers")
    tally = {"supported": [], "contradicted": [], "inconclusive": []}
    for method in view.suite.methods:
        if method != "base" and (pair := sides(method, "top_k_energy")) is not None:
            tally[verdict(difference_interval(*pair), "greater")].append(method)
    if any(tally.values()):
        c.numbers.append("trained models at their best rate (seeds × prompts), ood − test "
                         "top-5% energy: " + ", ".join(
                             f"{k} for {len(v)} ({', '.join(v)})" if v else f"{k} for 0"
                             for k, v in (("above 0", tally["supported"]),
                                          ("below 0", tally["contradicted"]),
                                          ("interval across 0", tally["inconclusive"]))))
    return c


def _ordering(d: Interval, margin: float) -> str:
    """A is above B (d = A − B): supported when the interval is above 0, contradicted only
    when it lies below −margin (B above A by more than what counts as kept)."""
    return "supported" if d.low > 0 else "contradicted" if d.high < -margin else "inconclusive"


def claim_g(view: View, task: str) -> Claim:
    c = Claim("g", "routing-only methods keep knowledge, full fine-tuning loses it, LoRA in between")
    if not view.env.get("probes", True):
        c.verdict, c.reason = NOT_APPLICABLE, "the environment has no knowledge probes"
        return c
    rows = {m: view.gain_rows(m, task, "probe_loglik")
            for m in ("full_sft", "svf_sft", "proxy_sft", "lora_sft")}
    full = rows["full_sft"]
    if full is None:
        c.reason = "needs full_sft cells and the base"
        return c
    # loses: more than the margin below the base; keeps: within ±margin of it
    parts = [verdict(iv := bootstrap_interval(full), "less", threshold=-KEEP_MARGIN)]
    c.numbers.append(f"full_sft probe log-likelihood − base {_fmt(iv)} nats (loses: below "
                     f"−{KEEP_MARGIN:g})")
    for m in ("svf_sft", "proxy_sft"):
        if rows[m] is not None:
            parts.append(verdict(iv := bootstrap_interval(rows[m]), "equal", margin=KEEP_MARGIN))
            c.numbers.append(f"{m} − base {_fmt(iv)} nats (keeps: within ±{KEEP_MARGIN:g})")
        elif m == "svf_sft":
            parts.append("inconclusive")
            c.numbers.append("svf_sft: missing cells")

    def vs(a: str, b: str, tag: str) -> None:
        ra, rb = rows[a], rows[b]
        if ra is None or rb is None or ra.shape != rb.shape:
            parts.append("inconclusive")
            c.numbers.append(f"{tag}: missing cells")
            return
        d = paired_difference(ra, rb)
        parts.append(_ordering(d, KEEP_MARGIN))
        c.numbers.append(f"{tag} {_fmt(d)}")

    vs("svf_sft", "full_sft", "svf_sft − full_sft")
    if rows["proxy_sft"] is not None:
        vs("proxy_sft", "full_sft", "proxy_sft − full_sft")
    vs("lora_sft", "full_sft", "lora_sft − full_sft")
    vs("svf_sft", "lora_sft", "svf_sft − lora_sft")
    c.verdict = _combine(parts)
    return c


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def cluster_correlation(points: Sequence[tuple[float, float, str]], *, n_boot: int = 2000,
                        seed: int = 0, level: float = 0.95) -> Interval:
    """Pearson r of (x, y) points with a cluster bootstrap: each replicate draws the clusters
    (one trained model's points) with replacement and keeps all of each drawn cluster's
    points, so points that share a model never count as independent. ``n_seeds`` of the
    result counts clusters and ``n_prompts`` points."""
    names = sorted({p[2] for p in points})
    idx = {n: [i for i, p in enumerate(points) if p[2] == n] for n in names}
    x = np.asarray([p[0] for p in points], dtype=float)
    y = np.asarray([p[1] for p in points], dtype=float)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        drawn = np.concatenate([idx[names[k]] for k in rng.integers(0, len(names), len(names))])
        reps[b] = _pearson(x[drawn], y[drawn])
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return Interval(_pearson(x, y), float(low), float(high), level, len(names), len(points))


def claim_h(view: View, tasks: Sequence[str]) -> Claim:
    c = Claim("h", "forgetting tracks KL(base‖tuned) on the task's prompts")
    pts = [(v.kl_prompts, v.forgetting, f"{cell.key.method}/{cell.key.task}/{cell.key.seed}/"
            f"{cell.key.lr:g}")
           for cell in view.results.cells
           if cell.key.task in tasks and cell.key.method != "base" for v in cell.variants
           if v.kl_prompts is not None and v.forgetting is not None]
    if len({p[2] for p in pts}) < 4:
        c.reason = "needs at least 4 trained models"
        return c
    iv = cluster_correlation(pts)
    kl, fg = np.asarray([p[:2] for p in pts]).T
    slope, intercept = np.polyfit(kl, fg, 1)
    c.verdict = verdict(iv, "greater", threshold=0.5)
    c.numbers += [f"pooled Pearson r {iv.estimate:.3g} [{iv.low:.3g}, {iv.high:.3g}] over "
                  f"{iv.n_prompts} points from {iv.n_seeds} trained models (cluster bootstrap "
                  "over models)", f"fit forgetting = {intercept:.3g} + {slope:.3g} × KL"]
    parts = []
    for task in tasks:
        tp = [p for p in pts if p[2].split("/")[1] == task]
        if len({p[2] for p in tp}) >= 4:
            t_iv = cluster_correlation(tp)
            parts.append(verdict(t_iv, "greater", threshold=0.5))
            c.numbers.append(f"{task}: r {t_iv.estimate:.3g} [{t_iv.low:.3g}, {t_iv.high:.3g}] "
                             f"({t_iv.n_seeds} models)")
    if len(tasks) > 1 and parts and c.verdict == "supported" and not all(p == "supported" for p in parts):
        c.verdict, c.reason = "inconclusive", "pooled r holds, but not within every task"
    return c


def all_claims(results: Results) -> list[tuple[str, list[Claim]]]:
    """Per task (and once for the claims pooled over tasks), the claims' verdicts."""
    view = View(results)
    tasks = view.suite.tasks
    out = [(task, [f(view, task) for f in (claim_a, claim_b, claim_c, claim_d, claim_e, claim_f,
                                           claim_g)])
           for task in tasks]
    out.append(("all tasks", [claim_h(view, tasks)]))
    return out
