"""Rendering of a `lrn compare` result: rich table, markdown, CSV and the two-panel PNG."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrn.compare import KINDS, TOKENS, Comparison, Run, Stat, eval_rows, is_number


def fmt_amount(kind: str, v: float) -> str:
    """Steps as numbers, tokens with k/M/G, seconds with an s; inf as ∞."""
    if math.isinf(v):
        return "∞"
    if math.isnan(v):
        return "?"
    if kind == "tokens":
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= scale:
                return f"{v / scale:.3g}{suffix}"
        return f"{v:g}"
    return f"{v:.1f}s" if kind == "seconds" else f"{v:g}"


def fmt_stat(s: Stat, n: int, fmt: Any) -> str:
    """``median (min–max)``; the range only when there are several runs."""
    median = "not reached" if math.isinf(s.median) else fmt(s.median)
    return median if n == 1 else f"{median} ({fmt(s.lo)}–{fmt(s.hi)})"


HEADERS = ["group", "runs", "reached", "steps to\ntarget", "tokens to\ntarget", "time to\ntarget",
           "speed-up\nsteps", "speed-up\ntokens", "speed-up\ntime", "final", "best", "time per\nstep"]


def table_rows(c: Comparison) -> list[list[str]]:
    """The cells of the comparison table, one row per group, as text."""
    rows = []
    for g in c.groups:
        n = len(g.runs)
        rows.append([
            g.label + (" (baseline)" if g.baseline else ""), str(n), f"{g.reached}/{n}",
            *(fmt_stat(g.to_target[k], n, lambda v, k=k: fmt_amount(k, v)) for k in KINDS),
            *("—" if g.speedup[k] is None else f"{g.speedup[k]:.2f}×" for k in KINDS),
            fmt_stat(g.final, n, "{:.3f}".format), fmt_stat(g.best, n, "{:.3f}".format),
            "?" if math.isnan(g.seconds_per_step) else f"{g.seconds_per_step:.3g}s",
        ])
    return rows


def headline(c: Comparison) -> str:
    """One line saying what was compared."""
    return (f"metric {c.metric}; target {c.target:.4g} ({c.target_source}); baseline {c.baseline}; "
            f"grouped by {', '.join(c.keys) or 'nothing'}")


CAPTION = "median over runs (min–max); ∞ = not reached; speed-up = baseline median / group median"


def print_table(c: Comparison) -> None:
    """Print the comparison as a rich table on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = 240
    table = Table(title=escape(headline(c)), caption=CAPTION, title_justify="left")
    for i, header in enumerate(HEADERS):
        table.add_column(header, overflow="fold", justify="left" if i == 0 else "right",
                         min_width=min(40, max(len(g.label) + 11 for g in c.groups)) if i == 0 else None)
    for row in table_rows(c):
        table.add_row(*map(escape, row))
    console.print(table)


def render_markdown(c: Comparison) -> str:
    """The comparison as a markdown document with one table."""
    header = "| " + " | ".join(h.replace("\n", " ") for h in HEADERS) + " |"
    lines = [f"# lrn compare\n\n{headline(c)}.\n\n{CAPTION}.\n", header,
             "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(c)]
    return "\n".join(lines) + "\n"


def write_csv(c: Comparison, path: Path) -> None:
    """The comparison as CSV with raw numbers (inf = not reached, empty = undefined speed-up)."""
    names = [*(f"{k}_to_target" for k in KINDS), "final", "best"]
    header = ["group", "baseline", "runs", "reached",
              *(f"{s}_{m}" for s in names for m in ("median", "min", "max")),
              *(f"speedup_{k}" for k in KINDS), "seconds_per_step", "metric", "target"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for g in c.groups:
            values = [*(g.to_target[k] for k in KINDS), g.final, g.best]
            writer.writerow([g.label, g.baseline, len(g.runs), g.reached,
                             *(x for s in values for x in (s.median, s.lo, s.hi)),
                             *("" if g.speedup[k] is None else g.speedup[k] for k in KINDS),
                             g.seconds_per_step, c.metric, c.target])


def band(runs: Sequence[Run], metric: str, x_key: str) -> tuple[Any, Any, Any, Any]:
    """Mean, min and max over runs, each run interpolated onto the union of x values all runs cover."""
    import numpy as np

    curves = []
    for run in runs:
        rows = [r for r in eval_rows(run.rows, metric) if is_number(r.get(x_key))]
        curves.append((np.array([r[x_key] for r in rows], float), np.array([r[metric] for r in rows], float)))
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return (np.array([]),) * 4
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    grid = grid[(grid >= max(x[0] for x, _ in curves)) & (grid <= min(x[-1] for x, _ in curves))]
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    return grid, ys.mean(0), ys.min(0), ys.max(0)


def plot(c: Comparison, path: Path) -> None:
    """Two panels, metric vs step and vs generated tokens: mean line and min–max band per group."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5))
    axes = fig.subplots(1, 2)
    x_axes = (("step", "step"), (TOKENS, "generated tokens (screening included)"))
    for ax, (x_key, x_label) in zip(axes, x_axes, strict=True):
        for i, g in enumerate(c.groups):
            x, mean, lo, hi = band(g.runs, c.metric, x_key)
            color = f"C{i % 10}"
            label = f"{g.label}{' (baseline)' if g.baseline else ''} (n={len(g.runs)})"
            ax.plot(x, mean, color=color, label=label, marker="o" if len(x) == 1 else None)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
        ax.axhline(c.target, color="gray", linestyle="--", label=f"target {c.target:.3g}")
        ax.set_xlabel(x_label)
        ax.set_ylabel(c.metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{c.metric}: mean over seeds, band = min–max")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(c: Comparison, out: Path) -> list[Path]:
    """Write compare.md, compare.csv and compare.png into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md, table, png = out / "compare.md", out / "compare.csv", out / "compare.png"
    md.write_text(render_markdown(c))
    write_csv(c, table)
    plot(c, png)
    return [md, table, png]
