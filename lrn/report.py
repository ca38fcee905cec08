"""Rendering of a `lrn compare` result: rich table, markdown, CSV and the two-panel PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from lrn.compare import Comparison, GroupSummary, Stat, run_curve
from lrn.curves import KINDS, LEVEL, RESAMPLES

PERCENT = round(100 * LEVEL)


def fmt_amount(kind: str, v: float) -> str:
    """Steps to one decimal, tokens with k/M/G, seconds with an s; inf as ∞.

    >>> fmt_amount("steps", 38.3333), fmt_amount("tokens", 12500), fmt_amount("seconds", math.inf)
    ('38.3', '12.5k', '∞')
    """
    if math.isinf(v):
        return "∞"
    if math.isnan(v):
        return "?"
    if kind == "tokens":
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= scale:
                return f"{v / scale:.3g}{suffix}"
        return f"{v:g}"
    return f"{v:.1f}s" if kind == "seconds" else f"{round(v, 1):g}"


def fmt_stat(s: Stat, n: int, fmt: Any) -> str:
    """``median (min–max)``; the range only when there are several runs."""
    return fmt(s.median) if n == 1 else f"{fmt(s.median)} ({fmt(s.lo)}–{fmt(s.hi)})"


def fmt_speedup(g: GroupSummary, kind: str) -> str:
    """``2.00× [1.50–3.00]``: the ratio and its bootstrap interval; — where undefined."""
    ratio, interval = g.speedup[kind], g.interval[kind]
    if ratio is None:
        return "—"
    text = f"{ratio:.2f}×"
    if interval is not None:
        text += " [" + "–".join("∞" if math.isinf(v) else f"{v:.2f}" for v in interval) + "]"
    return text


HEADERS = ["group", "runs", "reached", "steps to\ntarget\n(interp.)", "per seed\nsteps\n(interp.)",
           "tokens to\ntarget\n(interp.)", "time to\ntarget\n(interp.)",
           *(f"speed-up\n{k}\n[{PERCENT}% CI]" for k in ("steps", "tokens", "time")),
           "final", "best", "time per\nstep"]


def table_rows(c: Comparison) -> list[list[str]]:
    """The cells of the comparison table, one row per group, as text."""
    rows = []
    for g in c.groups:
        n = len(g.runs)
        rows.append([
            g.label + (" (baseline)" if g.baseline else ""), str(n), f"{g.reached}/{n}",
            "not reached" if math.isinf(g.to_target["steps"]) else fmt_amount("steps", g.to_target["steps"]),
            ", ".join(fmt_amount("steps", v) for v in g.per_seed["steps"]),
            *(fmt_amount(k, g.to_target[k]) for k in ("tokens", "seconds")),
            *(fmt_speedup(g, k) for k in KINDS),
            fmt_stat(g.final, n, "{:.3f}".format), fmt_stat(g.best, n, "{:.3f}".format),
            "?" if math.isnan(g.seconds_per_step) else f"{g.seconds_per_step:.3g}s",
        ])
    return rows


def headline(c: Comparison) -> str:
    """One line saying what was compared."""
    return (f"metric {c.metric}; target {c.target:.4g} ({c.target_source}); baseline {c.baseline}; "
            f"grouped by {', '.join(c.keys) or 'nothing'}")


CAPTION = ("to target: where the seed-mean curve (mean over seeds at the evaluation steps all seeds share) "
           "first reaches the target, interpolated linearly between the two evaluations around the crossing; "
           "∞ = not reached; per seed: each seed's own interpolated steps; speed-up = baseline / group, "
           f"[{PERCENT}% percentile bootstrap interval: seeds resampled with replacement within each group, "
           f"{RESAMPLES} resamples]; final, best: median over seeds (min–max)")


def print_table(c: Comparison) -> None:
    """Print the comparison as a rich table on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = 320  # a pipe or file: no wrapping of the wide table
    table = Table(title=escape(headline(c)), caption=escape(CAPTION), title_justify="left")
    for i, header in enumerate(HEADERS):
        table.add_column(escape(header), overflow="fold", justify="left" if i == 0 else "right",
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
    """The comparison as CSV with raw numbers: inf = not reached, empty = undefined, per-seed values
    joined by ``;`` in run order; ``_interp`` = interpolated between evaluations."""
    ci = f"ci{PERCENT}"
    header = ["group", "baseline", "runs", "reached", *(f"{k}_to_target_interp" for k in KINDS),
              *(f"{k}_to_target_interp_per_seed" for k in KINDS),
              *(f"speedup_{k}{end}" for k in KINDS for end in ("", f"_{ci}_lo", f"_{ci}_hi")),
              *(f"{s}_{m}" for s in ("final", "best") for m in ("median", "min", "max")),
              "seconds_per_step", "metric", "target"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for g in c.groups:
            speedups = [x for k in KINDS for x in (g.speedup[k], *(g.interval[k] or (None, None)))]
            writer.writerow([g.label, g.baseline, len(g.runs), g.reached, *(g.to_target[k] for k in KINDS),
                             *(";".join(map(str, g.per_seed[k])) for k in KINDS),
                             *("" if x is None else x for x in speedups),
                             *(x for s in (g.final, g.best) for x in (s.median, s.lo, s.hi)),
                             g.seconds_per_step, c.metric, c.target])


def band(g: GroupSummary, metric: str) -> tuple[list[float], list[float]]:
    """The lowest and highest seed's value at each step of the group's seed-mean curve."""
    curves = [run_curve(r.rows, metric) for r in g.runs]
    values = [[c.value[c.step.index(s)] for c in curves] for s in g.curve.step]
    return [min(v) for v in values], [max(v) for v in values]


def plot(c: Comparison, path: Path) -> None:
    """Two panels, metric vs step and vs generated tokens: seed-mean curve, min–max band and the
    interpolated crossing of the target (x) per group."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5))
    axes = fig.subplots(1, 2)
    x_axes = (("steps", "step"), ("tokens", "generated tokens (screening included)"))
    for ax, (kind, x_label) in zip(axes, x_axes, strict=True):
        for i, g in enumerate(c.groups):
            x, color = getattr(g.curve, KINDS[kind]), f"C{i % 10}"
            lo, hi = band(g, c.metric)
            label = f"{g.label}{' (baseline)' if g.baseline else ''} (n={len(g.runs)})"
            ax.plot(x, g.curve.value, color=color, label=label, marker="o" if len(x) == 1 else None)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
            if math.isfinite(g.to_target[kind]):
                ax.plot([g.to_target[kind]], [c.target], color=color, marker="x", markersize=9)
        ax.axhline(c.target, color="gray", linestyle="--", label=f"target {c.target:.3g}")
        ax.set_xlabel(x_label)
        ax.set_ylabel(c.metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{c.metric}: mean over seeds at shared evaluation steps, band = min–max over seeds, "
                 "x = interpolated crossing of the target")
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
