"""Text tables, a markdown report and PNG plots of :class:`UpdateStats` / :class:`OverlapStats`.

Files are written atomically through ``routekit.io``; the table layout and the PNG rendering
(matplotlib's Agg backend, no display needed) are :mod:`routekit.reporting`'s, shared with
``routekit compare``.
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_bytes
from ..reporting import figure_png, md_table, pyplot, text_table
from .schema import GroupStats, OverlapGroup, OverlapStats, UpdateStats


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def _tol(x: float) -> str:
    return f"{x:g}"


def _group_label(g: GroupStats) -> str:
    if g.matrix_type is None and g.layer is None:
        return "overall"
    if g.matrix_type is None:
        return f"layer {g.layer}"
    return g.matrix_type


def _stats_rows(stats: UpdateStats, groups: list[GroupStats]) -> tuple[list[str], list[list[str]]]:
    header = (
        ["group", "params", "tensors", "bitwise unch."]
        + [f"unch.@{_tol(a)}" for a in stats.atols]
        + [f"unch.@rtol {_tol(stats.rtol)}", "|dW|/|W|"]
    )
    if stats.rank_mode == "full":
        header += ["rank frac.", "eff. rank"]
    rows = []
    for g in groups:
        row = [
            _group_label(g)
            if g.layer is None or g.matrix_type is None
            else f"{g.layer}/{g.matrix_type}",
            f"{g.numel:,}",
            str(g.n_tensors),
            _pct(g.share_bitwise_unchanged),
        ]
        row += [_pct(s) for s in g.share_unchanged_atol]
        row += [_pct(g.share_unchanged_rtol), _num(g.rel_frob_norm)]
        if stats.rank_mode == "full":
            row += [_num(g.mean_rank_fraction), _num(g.mean_effective_rank, ".1f")]
        rows.append(row)
    return header, rows


def _run_line(stats: UpdateStats) -> str:
    r = stats.run
    line = (
        f"{stats.params_compared:,} parameters in {stats.n_tensors} tensors compared in "
        f"{r.seconds_total:.1f} s ({r.bytes_compared / 1e9:.2f} GB read, {r.gb_per_s:.2f} GB/s); "
        f"storage dtypes: base {', '.join(stats.storage_dtypes['base'])}, tuned "
        f"{', '.join(stats.storage_dtypes['tuned'])}"
    )
    if stats.rank_mode == "full":
        line += f"; rank on {r.rank_device} took {r.seconds_rank:.1f} s"
        if stats.rank_only is not None:
            line += (
                f" (only 2-D tensors matching {stats.rank_only!r}: {stats.overall.n_ranked} ranked)"
            )
    else:
        line += "; rank skipped"
    return line + "."


def summary_text(stats: UpdateStats) -> str:
    """The summary printed by ``routekit diff``: overall and per matrix type."""
    header, rows = _stats_rows(stats, [stats.overall, *stats.by_matrix_type])
    parts = [f"base:  {stats.base}", f"tuned: {stats.tuned}", "", text_table(header, rows), ""]
    parts.append(_run_line(stats))
    if stats.tied:
        parts.append("tied: " + "; ".join(stats.tied))
    return "\n".join(parts)


def markdown_report(stats: UpdateStats, plots: list[str] | None = None) -> str:
    """diff.md: run line, overall / per matrix type / per layer tables, plots."""
    lines = [
        "# routekit diff",
        "",
        f"- base: `{stats.base}` (fingerprint `{stats.base_fingerprint}`)",
        f"- tuned: `{stats.tuned}` (fingerprint `{stats.tuned_fingerprint}`)",
        f"- {_run_line(stats)}",
        "- *bitwise unch.*: stored bits identical (in the storage dtype); *unch.@t*: "
        "|w' - w| <= t in float32 of the stored values; *rtol*: |w' - w| <= rtol * max(|w|, |w'|); "
        "*|dW|/|W|*: Frobenius norm ratio"
        + (
            "; *rank frac.*: mean over 2-D tensors of rank(dW) / min(m, n) (torch.linalg.matrix_rank "
            "default tolerance); *eff. rank*: mean exp(entropy of normalised singular values)."
            if stats.rank_mode == "full"
            else "."
        ),
    ]
    if stats.tied:
        lines.append("- tied embeddings: " + "; ".join(stats.tied))
    lines += ["", "## Overall and per matrix type", ""]
    lines.append(md_table(*_stats_rows(stats, [stats.overall, *stats.by_matrix_type])))
    lines += ["", "## Per layer", ""]
    lines.append(md_table(*_stats_rows(stats, stats.by_layer)))
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", "## Per tensor", ""]
    header = [
        "tensor",
        "shape",
        "dtype",
        "bitwise unch.",
        f"unch.@{_tol(stats.atols[-1])}",
        "|dW|/|W|",
    ]
    if stats.rank_mode == "full":
        header += ["rank", "rank frac.", "eff. rank"]
    rows = []
    for t in stats.tensors:
        row = [
            f"`{t.name}`",
            "x".join(map(str, t.shape)),
            t.base_dtype if t.base_dtype == t.tuned_dtype else f"{t.base_dtype}/{t.tuned_dtype}",
            _pct(t.share_bitwise_unchanged),
            _pct(t.share_unchanged_atol[-1]),
            _num(t.rel_frob_norm),
        ]
        if stats.rank_mode == "full":
            row += [
                "-" if t.rank is None else str(t.rank),
                _num(t.rank_fraction),
                _num(t.effective_rank, ".1f"),
            ]
        rows.append(row)
    lines.append(md_table(header, rows))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# plots


def plot_unchanged_vs_tolerance(stats: UpdateStats) -> bytes:
    """Unchanged share against absolute tolerance (log x), overall and per matrix type;
    the bitwise share is drawn at the left as a marker."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pos = [(a, i) for i, a in enumerate(stats.atols) if a > 0]  # a log axis has no 0
    x_bitwise = (pos[0][0] if pos else 1e-8) / 10
    for g in [stats.overall, *stats.by_matrix_type]:
        label = _group_label(g)
        style = {"linewidth": 2.5, "color": "black"} if label == "overall" else {"linewidth": 1.2}
        line = ax.plot(
            [a for a, _ in pos],
            [100 * g.share_unchanged_atol[i] for _, i in pos],
            marker="o",
            markersize=3,
            label=label,
            **style,
        )[0]
        ax.scatter(
            [x_bitwise], [100 * g.share_bitwise_unchanged], marker="s", s=18, color=line.get_color()
        )
    ax.set_xscale("log")
    ax.set_xlabel("absolute tolerance (squares, left: bitwise in storage dtype)")
    ax.set_ylabel("parameters unchanged (%)")
    ax.set_title("Unchanged share vs tolerance")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return figure_png(fig)


def plot_density_heatmap(stats: UpdateStats) -> bytes:
    """Update density (share of entries with changed bits) per layer x matrix type."""
    import numpy as np

    plt = pyplot()
    layers = [g.layer for g in stats.by_layer if g.layer is not None]
    types = [
        g.matrix_type
        for g in stats.by_matrix_type
        if any(c.matrix_type == g.matrix_type and c.layer is not None for c in stats.by_layer_type)
    ]
    if not layers or not types:  # no decoder layers recognised: one row of matrix types
        layers_rows: list[int | None] = [None]
        types = [g.matrix_type for g in stats.by_matrix_type]
    else:
        layers_rows = list(layers)
    grid = np.full((len(layers_rows), len(types)), np.nan)
    cells = {(c.layer, c.matrix_type): c for c in stats.by_layer_type}
    if layers_rows == [None]:
        cells = {(None, g.matrix_type): g for g in stats.by_matrix_type}
    for i, ly in enumerate(layers_rows):
        for j, t in enumerate(types):
            c = cells.get((ly, t))
            if c is not None:
                grid[i, j] = 100 * c.density
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(types), 1.2 + 0.28 * len(layers_rows)))
    im = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        cmap="viridis",
        vmin=0,
        vmax=100,
        interpolation="nearest",
    )
    if grid.size <= 400:  # small enough to print each cell's value
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if not np.isnan(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if grid[i, j] < 60 else "black",
                    )
    ax.set_xticks(range(len(types)), types, rotation=45, ha="right")
    ax.set_yticks(range(len(layers_rows)), ["all" if ly is None else str(ly) for ly in layers_rows])
    ax.set_xlabel("matrix type")
    ax.set_ylabel("layer")
    ax.set_title("Update density (% entries changed, bitwise)")
    fig.colorbar(im, ax=ax, label="% changed")
    return figure_png(fig)


def write_diff_outputs(stats: UpdateStats, out_dir: str | Path) -> list[Path]:
    """Write diff.json, diff.md and plots/*.png under ``out_dir``, each file atomically."""
    out = Path(out_dir)
    written = []
    plots = {
        "plots/unchanged_vs_tolerance.png": plot_unchanged_vs_tolerance(stats),
        "plots/density_heatmap.png": plot_density_heatmap(stats),
    }
    for rel, data in plots.items():
        written.append(atomic_write_bytes(out / rel, data))
    written.append(
        atomic_write_bytes(out / "diff.json", (stats.model_dump_json(indent=2) + "\n").encode())
    )
    written.append(
        atomic_write_bytes(out / "diff.md", markdown_report(stats, list(plots)).encode())
    )
    return written


# --------------------------------------------------------------------------------------------
# overlap


def _overlap_rows(groups: list[tuple[str, OverlapGroup]]) -> tuple[list[str], list[list[str]]]:
    header = [
        "group",
        "params",
        "p1 (A)",
        "p2 (B)",
        "o1",
        "E[o1]=p2",
        "o2",
        "E[o2]=p1",
        "Jaccard",
        "E[Jaccard]",
    ]
    rows = []
    for label, g in groups:
        rows.append(
            [
                label,
                f"{g.numel:,}",
                _pct(g.density_a),
                _pct(g.density_b),
                _pct(g.o1),
                _pct(g.expected_o1),
                _pct(g.o2),
                _pct(g.expected_o2),
                _pct(g.jaccard),
                _pct(g.expected_jaccard),
            ]
        )
    return header, rows


def _overlap_groups(ov: OverlapStats) -> list[tuple[str, OverlapGroup]]:
    return [("overall", ov.overall)] + [(g.matrix_type or "?", g) for g in ov.by_matrix_type]


def overlap_text(ov: OverlapStats) -> str:
    header, rows = _overlap_rows(_overlap_groups(ov))
    o = ov.overall
    return "\n".join(
        [
            f"base:    {ov.base}",
            f"tuned A: {ov.tuned_a}",
            f"tuned B: {ov.tuned_b}",
            f"changed = {ov.criterion}; expectations are for independent random masks of the same "
            "densities.",
            "",
            text_table(header, rows),
            "",
            f"overall, with a random mask per tensor of that tensor's densities: E[o1] = "
            f"{_pct(o.expected_o1_stratified)}, E[o2] = {_pct(o.expected_o2_stratified)}. "
            f"({ov.seconds_total:.1f} s)",
        ]
    )


def overlap_markdown(ov: OverlapStats) -> str:
    o = ov.overall
    lines = [
        "# routekit diff --overlap",
        "",
        f"- base: `{ov.base}`",
        f"- tuned A: `{ov.tuned_a}`",
        f"- tuned B: `{ov.tuned_b}`",
        f"- changed = {ov.criterion}. o1 = |I1 n I2| / |I1|, o2 = |I1 n I2| / |I2|; for "
        "independent random masks of densities p1, p2: E[o1] = p2, E[o2] = p1, "
        "Jaccard = p1 p2 / (p1 + p2 - p1 p2).",
        f"- with a random mask per tensor of that tensor's densities: E[o1] = "
        f"{_pct(o.expected_o1_stratified)}, E[o2] = {_pct(o.expected_o2_stratified)}.",
        "",
        "## Overall and per matrix type",
        "",
        md_table(*_overlap_rows(_overlap_groups(ov))),
        "",
        "## Per layer",
        "",
        md_table(
            *_overlap_rows(
                [("non-layer" if g.layer is None else f"layer {g.layer}", g) for g in ov.by_layer]
            )
        ),
        "",
    ]
    return "\n".join(lines)


def write_overlap_outputs(ov: OverlapStats, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    return [
        atomic_write_bytes(out / "overlap.json", (ov.model_dump_json(indent=2) + "\n").encode()),
        atomic_write_bytes(out / "overlap.md", overlap_markdown(ov).encode()),
    ]


__all__ = [
    "summary_text",
    "markdown_report",
    "plot_unchanged_vs_tolerance",
    "plot_density_heatmap",
    "write_diff_outputs",
    "overlap_text",
    "overlap_markdown",
    "write_overlap_outputs",
]
