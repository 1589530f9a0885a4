"""The comparison's PNG plots (matplotlib, Agg backend), each from results.json alone.

- ``frontier.png``: task gain vs retention (probe answer log-likelihood minus the base's)
  of every cell and α, per method, with each method's Pareto frontier;
- ``sparsity_tolerance.png``: share of parameters unchanged vs tolerance (bitwise, then
  each absolute tolerance) for float32 and bf16-storage RL;
- ``layer_density.png``: update density per layer for each weight-space method;
- ``behaviour.png``: shares of correct and systematic-wrong answers over training steps;
- ``forgetting_kl.png``: forgetting vs KL(base‖tuned) on the task's prompts, with its fit;
- ``activations.png``: top-5% energy share per layer on test vs ood prompts.

Each function returns PNG bytes, or None when the results hold nothing to plot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes
from ..reporting import figure_png, pyplot
from .results import CellRecord, Results


def _base(results: Results, task: str) -> CellRecord | None:
    return next((c for c in results.cells if c.key.method == "base" and c.key.task == task), None)


def _one_per_method(cells: list[CellRecord]) -> list[CellRecord]:
    """The first cell of each (method, task): the lowest lr's first seed, in run order."""
    seen: set[tuple[str, str]] = set()
    out = []
    for c in cells:
        if (c.key.method, c.key.task) not in seen:
            seen.add((c.key.method, c.key.task))
            out.append(c)
    return out


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (higher is better), by x."""
    front = [p for p in points
             if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def frontier_points(results: Results) -> dict[tuple[str, str], list[tuple[float, float, str]]]:
    """Per (method, task): (retention Δ, gain, label) for every cell and α."""
    out: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for c in results.cells:
        base = _base(results, c.key.task)
        if base is None or c.key.method == "base":
            continue
        b = base.best()
        for v in c.variants:
            if v.probe_loglik is None or b.probe_loglik is None:
                continue
            label = f"lr {c.key.lr:g} s{c.key.seed}" + (f" α {v.alpha:g}" if v.alpha is not None else "")
            out.setdefault((c.key.method, c.key.task), []).append(
                (v.probe_loglik - b.probe_loglik, v.test_accuracy - b.test_accuracy, label))
    return out


def plot_frontier(results: Results) -> bytes | None:
    pts = frontier_points(results)
    if not pts:
        return None
    plt = pyplot()
    tasks = sorted({t for _, t in pts})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, ((method, t), p) in enumerate(sorted(pts.items())):
            if t != task:
                continue
            color = plt.cm.tab20(i % 20)
            xs, ys = [q[0] for q in p], [q[1] for q in p]
            ax.scatter(xs, ys, color=color, s=18, label=method)
            front = pareto([(q[0], q[1]) for q in p])
            ax.plot([f[0] for f in front], [f[1] for f in front], color=color, lw=1)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("retention: probe answer log-likelihood − base (nats)")
        ax.set_ylabel("task gain: test accuracy − base")
        ax.set_title(f"{task}: gain vs retention (lines: Pareto frontier)")
        ax.legend(fontsize=7)
    return figure_png(fig)


def plot_sparsity_tolerance(results: Results) -> bytes | None:
    cells = [c for c in results.cells if c.structure and c.key.method in ("full_rl", "full_rl_bf16")]
    if not cells:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for c in cells:
        s = c.structure
        xs = ["bitwise"] + [f"{a:g}" for a in s.atols]
        ys = [s.share_bitwise_unchanged] + list(s.share_unchanged_atol)
        style = "-" if c.key.method == "full_rl_bf16" else "--"
        gain = c.best().test_accuracy - (_base(results, c.key.task).best().test_accuracy
                                         if _base(results, c.key.task) else 0.0)
        ax.plot(xs, ys, style, marker="o", label=f"{c.key.method} {c.key.task} lr {c.key.lr:g} "
                f"s{c.key.seed} (gain {gain:+.2f})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tolerance (|Δw| ≤ atol)")
    ax.set_ylabel("share of parameters unchanged")
    ax.set_title("RL update sparsity: float32 (dashed) vs bf16 storage (solid)")
    ax.legend(fontsize=6)
    return figure_png(fig)


def plot_layer_density(results: Results) -> bytes | None:
    cells = [c for c in results.cells if c.structure]
    if not cells:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in _one_per_method(cells):
        layers = sorted((k for k in c.structure.density_by_layer if k != "None"), key=int)
        ax.plot([int(k) for k in layers], [c.structure.density_by_layer[k] for k in layers],
                marker="o", label=f"{c.key.method} {c.key.task} lr {c.key.lr:g}")
    ax.set_xlabel("layer")
    ax.set_ylabel("update density (share of entries changed, bitwise)")
    ax.set_title("Where the update lands, per layer")
    ax.legend(fontsize=6)
    return figure_png(fig)


def plot_behaviour(results: Results) -> bytes | None:
    cells = [c for c in results.cells if c.behaviour_history and c.key.method != "base"]
    if not cells:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for i, c in enumerate(cells):
        base = _base(results, c.key.task)
        hist = (base.behaviour_history if base else []) + c.behaviour_history
        steps = [h["step"] for h in hist]
        color = plt.cm.tab20(i % 20)
        for ax, which in zip(axes, ("correct", "systematic")):
            ax.plot(steps, [h[which] for h in hist], marker=".", color=color,
                    label=f"{c.key.method} {c.key.task} lr {c.key.lr:g} s{c.key.seed}")
    for ax, which in zip(axes, ("correct", "systematic wrong answer")):
        ax.set_xlabel("training step")
        ax.set_title(f"share of test answers: {which}")
    axes[0].set_ylabel("share")
    axes[1].legend(fontsize=5)
    return figure_png(fig)


def plot_forgetting_kl(results: Results) -> bytes | None:
    pts = [(v.kl_prompts, v.forgetting, c.key.method) for c in results.cells
           if c.key.method != "base" for v in c.variants
           if v.kl_prompts is not None and v.forgetting is not None]
    if len(pts) < 2:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    methods = sorted({p[2] for p in pts})
    for i, m in enumerate(methods):
        q = [p for p in pts if p[2] == m]
        ax.scatter([p[0] for p in q], [p[1] for p in q], s=18, color=plt.cm.tab20(i % 20), label=m)
    kl = np.array([p[0] for p in pts])
    fg = np.array([p[1] for p in pts])
    if kl.std() > 0:
        slope, intercept = np.polyfit(kl, fg, 1)
        xs = np.linspace(kl.min(), kl.max(), 50)
        r = np.corrcoef(kl, fg)[0, 1] if fg.std() > 0 else 0.0
        ax.plot(xs, intercept + slope * xs, "k-", lw=1,
                label=f"fit {intercept:.3g} + {slope:.3g}·KL (r = {r:.2f})")
    ax.set_xlabel("KL(base‖tuned) per token on the task's prompts (nats)")
    ax.set_ylabel("forgetting: held-out CE after − before (nats)")
    ax.set_title("Forgetting vs KL")
    ax.legend(fontsize=6)
    return figure_png(fig)


def plot_activations(results: Results) -> bytes | None:
    cells = [c for c in results.cells if c.activations]
    if not cells:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, c in enumerate(_one_per_method(cells)):
        color = plt.cm.tab20(i % 20)
        for split, style in (("test", "--"), ("ood", "-")):
            rows = c.activations[split]
            ax.plot([r["layer"] for r in rows], [r["top_k_energy"] for r in rows], style,
                    color=color, marker=".", label=f"{c.key.method} {c.key.task} {split}")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("top-5% energy share (higher = sparser)")
    ax.set_title("Hidden-state sparsity: test (dashed) vs ood (solid)")
    ax.legend(fontsize=5)
    return figure_png(fig)


PLOTS = {
    "frontier.png": plot_frontier,
    "sparsity_tolerance.png": plot_sparsity_tolerance,
    "layer_density.png": plot_layer_density,
    "behaviour.png": plot_behaviour,
    "forgetting_kl.png": plot_forgetting_kl,
    "activations.png": plot_activations,
}


def write_plots(results: Results, directory: str | Path) -> list[Path]:
    """Write every plot the results allow into ``directory``; returns the files written."""
    written = []
    for name, fn in PLOTS.items():
        png = fn(results)
        if png is not None:
            written.append(atomic_write_bytes(Path(directory) / name, png))
    return written
