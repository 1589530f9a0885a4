"""``report.md`` (and the headline table the command prints) from a run's results.

Sections: the headline table (each method at its best lr, mean ± std over seeds, with the
split that chose it), how each rate and α was chosen (every candidate's val and test
accuracy; :mod:`.selection`), one verdict line per claim, the gain-vs-retention Pareto frontier per method, update structure of the weight-space methods
beside their task gain, overlaps across seeds, one verdict line per claim (a)–(h) (see
:mod:`.claims`), every cell, and the plots (:mod:`.plots`). Renders from results.json alone.
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_bytes
from ..reporting import md_table, text_table
from .claims import View, all_claims
from .plots import frontier_points, pareto, write_plots
from .results import Results, Selection
from .selection import OPTIMISTIC, selections
from .stats import mean_std


def _ms(values: list[float | None], fmt: str = ".3f") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    m, s = mean_std(vals)
    return f"{m:{fmt}}" + (f" ± {s:{fmt}}" if s is not None else "")


def _selection(results: Results) -> dict[tuple[str, str], Selection]:
    """Per (method, task), how its rate and α were chosen (from the cells, so results.json
    written before ``selection`` was kept renders the same)."""
    suite = View(results).suite
    return {(s.method, s.task): s for s in selections(suite, {c.cell_id: c for c in results.cells})}


FIXED = "fixed (chosen_lrs)"  # a rate the suite gave (a multi-world run's first world chose it)


def _fixed(results: Results, method: str, task: str) -> bool:
    return task in (results.suite.get("chosen_lrs") or {}).get(method, {})


def _chosen_on(sel: Selection | None, fixed: bool = False) -> str:
    if fixed:
        return FIXED
    if sel is None or len(sel.candidates) < 2:
        return "—"
    return OPTIMISTIC if sel.optimistic else sel.split


def headline(results: Results) -> tuple[list[str], list[list[str]]]:
    """Each method at its best lr per task: the figures a reader compares first."""
    view = View(results)
    chosen = _selection(results)
    header = ["task", "method", "lr", "α", "chosen on", "seeds", "val acc", "test acc",
              "ood acc", "probe acc",
              "statement acc", "probe loglik", "forgetting", "KL prompts", "unchanged",
              "proxy own acc", "trainable", "train s"]
    rows = []
    for task in view.suite.tasks:
        for m in view.suite.methods:
            cells = view.cells(m, task)
            if not cells:
                continue
            best = [c.best() for c in cells]
            alphas = sorted({b.alpha for b in best if b.alpha is not None})
            own = [c.proxy_own.get("test_accuracy") for c in cells if c.proxy_own]
            rows.append([
                task, m, "—" if m == "base" else f"{cells[0].key.lr:g}",
                ",".join(f"{a:g}" for a in alphas) or "—",
                _chosen_on(chosen.get((m, task)), _fixed(results, m, task)),
                str(len(cells)), _ms([b.val_accuracy for b in best]),
                _ms([b.test_accuracy for b in best]), _ms([b.ood_accuracy for b in best]),
                _ms([b.probe_accuracy for b in best]), _ms([b.statement_accuracy for b in best]),
                _ms([b.probe_loglik for b in best]), _ms([b.forgetting for b in best], ".4f"),
                _ms([b.kl_prompts for b in best], ".4f"),
                _ms([c.structure.share_bitwise_unchanged if c.structure else None for c in cells]),
                _ms(own), f"{cells[0].trainable_parameters:,}",
                _ms([c.train_seconds for c in cells], ".0f"),
            ])
    return header, rows


def headline_text(results: Results) -> str:
    """The headline table as aligned plain text (what ``routekit compare`` prints)."""
    return text_table(*headline(results))


def _selection_section(results: Results) -> str:
    """Every candidate of every choice, val beside test, the chosen one marked."""
    rows = []
    for sel in _selection(results).values():
        for c in sel.candidates:
            rows.append([sel.task, sel.method, f"{c.lr:g}", "—" if c.alpha is None else f"{c.alpha:g}",
                         "—" if c.val_accuracy is None else f"{c.val_accuracy:.3f}",
                         f"{c.test_accuracy:.3f}",
                         (FIXED if _fixed(results, sel.method, sel.task) else OPTIMISTIC
                          if sel.optimistic else f"chosen on {sel.split}")
                         if c.chosen else ""])
    if not rows:
        return "No trained cells.\n"
    return md_table(["task", "method", "lr", "α", "val acc", "test acc", "chosen"], rows) + "\n"


def _optimistic_note(results: Results) -> list[str]:
    picked = sorted({(s.task, s.method) for s in _selection(results).values() if s.optimistic})
    if not picked:
        return []
    tasks = sorted({t for t, _ in picked})
    return [f"**Chosen on test (optimistic):** task{'s' if len(tasks) > 1 else ''} "
            f"{', '.join(tasks)} {'have' if len(tasks) > 1 else 'has'} no val split, so "
            f"{len(picked)} method{'s' if len(picked) > 1 else ''}' rates (and α) were chosen on "
            "the test prompts the verdicts below are judged on: each chosen figure is a maximum "
            "over its sweep on those prompts, biased upward. Give the task a val split (or "
            "run one rate per method) for verdicts free of that bias.", ""]


def _frontier_section(results: Results) -> str:
    rows = []
    for (method, task), pts in sorted(frontier_points(results).items()):
        front = pareto([(p[0], p[1]) for p in pts])
        labels = {(p[0], p[1]): p[2] for p in pts}
        rows.append([task, method, str(len(pts)),
                     "; ".join(f"{labels[f]}: Δloglik {f[0]:+.3f}, gain {f[1]:+.3f}" for f in front)])
    if not rows:
        return "No trained cells with retention figures.\n"
    return md_table(["task", "method", "points", "Pareto frontier (retention Δ, task gain)"], rows) + "\n"


def _structure_section(results: Results) -> str:
    base_acc = {c.key.task: c.best().test_accuracy for c in results.cells if c.key.method == "base"}
    rows = []
    for c in results.cells:
        s = c.structure
        if s is None:
            continue
        gain = c.best().test_accuracy - base_acc.get(c.key.task, 0.0)
        rows.append([c.key.task, c.key.method, f"{c.key.lr:g}", str(c.key.seed), s.against,
                     f"{s.share_bitwise_unchanged:.4f}",
                     " / ".join(f"{x:.3f}" for x in s.share_unchanged_atol),
                     "—" if s.mean_rank_fraction is None else f"{s.mean_rank_fraction:.3f}",
                     "—" if s.rel_frob_norm is None else f"{s.rel_frob_norm:.2e}",
                     "—" if c.mask_density is None else f"{c.mask_density:.3f}",
                     f"{gain:+.3f}"])
    if not rows:
        return "No weight-space cells.\n"
    atols = next(c.structure.atols for c in results.cells if c.structure)
    header = ["task", "method", "lr", "seed", "diffed against", "unchanged (bitwise)",
              "unchanged within " + " / ".join(f"{a:g}" for a in atols), "rank fraction",
              "‖ΔW‖/‖W‖", "mask density", "test gain"]
    return md_table(header, rows) + "\n"


def _overlap_section(results: Results) -> str:
    if not results.overlaps:
        return "No method ran on two seeds at one lr; no overlap to report.\n"
    rows = [[o.task, o.method, f"{o.lr:g}", f"{o.seeds[0]}–{o.seeds[1]}",
             "—" if o.o1 is None else f"{o.o1:.3f}", "—" if o.expected_o1 is None else f"{o.expected_o1:.3f}",
             "—" if o.jaccard is None else f"{o.jaccard:.3f}",
             "—" if o.expected_jaccard is None else f"{o.expected_jaccard:.3f}"]
            for o in results.overlaps]
    return md_table(["task", "method", "lr", "seeds", "o1", "random o1", "Jaccard",
                      "random Jaccard"], rows) + "\n"


def _cells_section(results: Results) -> str:
    rows = []
    for c in results.cells:
        own = "—"
        if c.proxy_own:  # a steered result is shown beside what its tuned proxy does alone
            own = " / ".join(f"{c.proxy_own[k]:.3f}" for k in ("test_accuracy", "ood_accuracy")
                             if c.proxy_own.get(k) is not None)
        for v in c.variants:
            rows.append([c.cell_id, "—" if v.alpha is None else f"{v.alpha:g}",
                         f"{v.test_accuracy:.3f}",
                         "—" if v.ood_accuracy is None else f"{v.ood_accuracy:.3f}",
                         "—" if v.probe_accuracy is None else f"{v.probe_accuracy:.3f}",
                         "—" if v.probe_loglik is None else f"{v.probe_loglik:.3f}",
                         "—" if v.forgetting is None else f"{v.forgetting:.4f}",
                         "—" if v.kl_text is None else f"{v.kl_text:.4f}",
                         "—" if v.kl_prompts is None else f"{v.kl_prompts:.4f}",
                         own, f"{c.train_seconds:.0f}", f"{c.eval_seconds:.0f}",
                         f"{c.peak_rss_mb:.0f}"])
    return md_table(["cell", "α", "test", "ood", "probes", "probe loglik", "forgetting",
                      "KL text", "KL prompts", "tuned proxy alone: test / ood", "train s",
                      "eval s", "peak MB"], rows) + "\n"


def _environment_line(results: Results) -> str:
    """'World' or 'Local model <path>' (results before the environment was kept: a world)."""
    env = results.environment
    if env.get("kind", "world") == "world":
        return "World"
    return f"Local model `{env.get('model')}`, data"


def render(results: Results, plots: list[str] | None = None) -> str:
    """The report as markdown; ``plots`` are relative paths of PNGs to embed."""
    m = results.manifest
    lines = [
        f"# routekit compare: suite `{m.suite}`",
        "",
        f"{_environment_line(results)} `{m.world.config_hash}` (base weights "
        f"`{m.world.base_fingerprint}`, proxy `{m.world.proxy_fingerprint or 'none'}`), "
        f"routekit {m.routekit_version}, "
        f"torch {results.packages.get('torch', '?')}, {len(results.cells)} cells. Methods are "
        "compared at their own best learning rate and proxy methods at their best α (the "
        "tuned proxy's own accuracy beside), chosen on the first seed on the task's val split "
        "where it has one, else on test and labelled so (see 'How each rate was chosen').",
        "",
        "## Headline (best lr per method; mean ± std over seeds)",
        "",
        md_table(*headline(results)),
        "",
        "## How each rate was chosen (first seed)",
        "",
        _selection_section(results),
        "## Verdicts",
        "",
        *_optimistic_note(results),
        "95% bootstrap intervals over seeds and prompts, crossed (one prompt draw per replicate "
        "for every seed, as every seed answers the same prompts; each number says its units: seeds × "
        "prompts, seed pairs, or for (h) cells); a verdict commits only when its interval "
        "excludes the other side; a per-seed figure needs five seeds or more (below that its "
        "range is shown); 'not applicable' says why a claim could not fail or its method did "
        "not run.",
        "",
    ]
    for scope, claims in all_claims(results):
        lines.append(f"### {scope}")
        lines.append("")
        lines += [f"- {c.line()}" for c in claims]
        lines.append("")
    lines += ["## Gain vs retention: Pareto frontier per method", "", _frontier_section(results),
              "## Update structure (weight-space methods)", "",
              "A bf16-storage cell is diffed against the base cast to bf16, so the cast itself "
              "is not counted as an update.", "", _structure_section(results),
              "## Overlap of updated sets across seeds (bitwise)", "", _overlap_section(results),
              "## Every cell", "", _cells_section(results)]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def write_report(results: Results, run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` into ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    pngs = write_plots(results, run_dir / "plots")
    text = render(results, [str(p.relative_to(run_dir)) for p in pngs])
    return atomic_write_bytes(run_dir / "report.md", text.encode())
