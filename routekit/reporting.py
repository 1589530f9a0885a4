"""Table and figure helpers that every report of routekit shares.

``routekit diff`` (:mod:`routekit.analysis.diff_report`) and ``routekit compare``
(:mod:`routekit.compare.report`, :mod:`routekit.compare.plots`) lay out their text tables,
markdown tables and PNG figures with these, so the two reports read alike. Nothing here knows
what the rows mean: callers pass headers and rows of already formatted strings, or a finished
matplotlib figure. matplotlib is imported only when a figure is made (Agg backend: no display).
"""

from __future__ import annotations

import io
from typing import Any


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned, a rule of
    dashes under the header."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = [
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
    return "\n".join(lines)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (first column left-aligned, the others right-aligned); a ``|`` inside
    a cell is escaped so that it cannot split the cell."""

    def cell(x: str) -> str:
        return x.replace("|", "\\|")

    out = [
        "| " + " | ".join(map(cell, header)) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    out += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(out)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (figures render without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any) -> bytes:
    """The PNG bytes of a matplotlib figure (110 dpi, tight bounding box); the figure is
    closed afterwards, so a report that draws many does not hold them all."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
