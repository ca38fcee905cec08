"""Rendering of a `lrn compare` result: rich tables, markdown, two CSVs and the two-panel PNG.

Three tables: the groups (seeds, pairing, final and best, time per step, area under metric vs tokens),
each group at each target (amounts and speed-ups), and each group at each budget (metric and difference).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lrn.compare import METHOD_NAMES, Comparison, GroupSummary, Stat
from lrn.curves import KINDS
from lrn.intervals import Estimate
from lrn.runs import run_curve

Table = tuple[str, list[str], list[list[str]]]  # title, headers, rows


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
        return f"{v:.3g}"
    return f"{v:.1f}s" if kind == "seconds" else f"{round(v, 1):g}"


def fmt_stat(s: Stat, n: int, fmt: Any) -> str:
    """``median (min–max)``; the range only when there are several runs."""
    return fmt(s.median) if n == 1 else f"{fmt(s.median)} ({fmt(s.lo)}–{fmt(s.hi)})"


def fmt_estimate(e: Estimate | None, fmt: Callable[[float], str], sep: str = "–") -> str:
    """``value [lo–hi]``; the value alone without an interval; — where undefined.

    >>> fmt_estimate(Estimate(2.0, 1.5, math.inf), "{:.2f}×".format), fmt_estimate(None, str)
    ('2.00× [1.50–∞]', '—')
    """
    if e is None:
        return "—"
    text = fmt(e.value)
    if e.lo is not None and e.hi is not None:
        ends = ["∞" if math.isinf(v) else fmt(v).rstrip("×") for v in (e.lo, e.hi)]
        text += f" [{ends[0]}{sep}{ends[1]}]"
    return text


def ratio_cell(e: Estimate | None) -> str:
    return fmt_estimate(e, "{:.2f}×".format)


def accuracy_cell(e: Estimate | None) -> str:
    return fmt_estimate(e, "{:.3f}".format)


def delta_cell(e: Estimate | None) -> str:
    return fmt_estimate(e, "{:+.3f}".format, ", ")


def group_name(g: GroupSummary) -> str:
    return g.label + (" (baseline)" if g.baseline else "") + (" (reference)" if g.reference else "")


def fmt_target(c: Comparison, t: float, fraction: float | None) -> str:
    return f"{t:.4g}" + (f" ({fraction:g})" if fraction is not None else "")


def groups_table(c: Comparison) -> Table:
    lo, hi = c.area_range
    span = f"{fmt_amount('tokens', lo)}–{fmt_amount('tokens', hi)}"
    ref = c.reference is not None
    headers = ["group", "seeds", "vs baseline", *(["vs reference"] if ref else []), "final", "best",
               "time per\nstep", f"mean metric\nover tokens\n{span}", "Δ vs\nbaseline",
               *(["Δ vs\nreference"] if ref else [])]
    rows = []
    for g in c.groups:
        n = len(g.runs)
        rows.append([group_name(g), ", ".join(map(str, g.seeds)), g.pairing or "—",
                     *([g.pairing_reference or "—"] if ref else []),
                     fmt_stat(g.final, n, "{:.3f}".format), fmt_stat(g.best, n, "{:.3f}".format),
                     "?" if math.isnan(g.seconds_per_step) else f"{g.seconds_per_step:.3g}s",
                     accuracy_cell(g.area), delta_cell(g.area_delta),
                     *([delta_cell(g.area_delta_reference)] if ref else [])])
    return "groups", headers, rows


def targets_table(c: Comparison) -> Table:
    ref = c.reference is not None
    names = {"steps": "steps", "tokens": "tokens", "seconds": "time"}
    headers = ["group", "target", "reached", "steps to\ntarget\n(interp.)", "per seed\nsteps\n(interp.)",
               "tokens to\ntarget\n(interp.)", "time to\ntarget\n(interp.)",
               *(f"speed-up\n{names[k]}\n× baseline" for k in KINDS),
               *((f"speed-up\n{names[k]}\n× reference" for k in KINDS) if ref else ())]
    early = {g.label: [r.early for r in g.targets] for g in c.groups}

    def ratio_marked(e: Estimate | None, mine: bool, theirs: bool) -> str:
        """A ratio with * where either crossing is early (not on the 1.00× of a group against itself)."""
        return ratio_cell(e) + ("*" if e is not None and e.lo is not None and (mine or theirs) else "")

    rows = []
    for i, t in enumerate(c.targets):
        for g in c.groups:
            r, n, mine = g.targets[i], len(g.runs), early[g.label][i]
            steps = "not reached" if math.isinf(r.to_target["steps"]) else fmt_amount("steps", r.to_target["steps"])
            rows.append([group_name(g), fmt_target(c, t, r.fraction), f"{r.reached}/{n}", steps + "*" * mine,
                         ", ".join(fmt_amount("steps", v) for v in r.per_seed["steps"]),
                         *(fmt_amount(k, r.to_target[k]) for k in ("tokens", "seconds")),
                         *(ratio_marked(r.speedup.get(k), mine, early[c.baseline][i]) for k in KINDS),
                         *((ratio_marked(r.vs_reference.get(k), mine, early[c.reference][i]) for k in KINDS)
                           if ref else ())])
    return "to target", headers, rows


def budgets_table(c: Comparison) -> Table:
    ref = c.reference is not None
    headers = ["budget", "group", "seeds\ncovering", "metric at budget", "Δ vs baseline",
               *(["Δ vs reference"] if ref else [])]
    rows = []
    for kind, pairs in c.budgets.items():
        for b, share in pairs:
            label = f"{fmt_amount(kind, b)} {kind}" if kind != "seconds" else f"{fmt_amount(kind, b)}"
            label += f" ({share:.0%})" if share is not None else ""
            for g in c.groups:
                r = next(x for x in g.budgets if x.kind == kind and x.budget == b)
                covered = sum(not math.isnan(v) for v in r.per_seed)
                rows.append([label, group_name(g), f"{covered}/{len(g.runs)}", accuracy_cell(r.accuracy),
                             "—" if g.baseline else delta_cell(r.delta),
                             *(["—" if g.reference else delta_cell(r.delta_reference)] if ref else [])])
    return "at budget", headers, rows


def tables(c: Comparison) -> list[Table]:
    return [groups_table(c), targets_table(c), budgets_table(c)]


def headline(c: Comparison) -> list[str]:
    """What was compared and how every number was made, one line each."""
    ref = f"; reference {c.reference}" if c.reference else ""
    percent = f"{c.level:.0%}"
    return [
        f"metric {c.metric}; baseline {c.baseline}{ref}; grouped by {', '.join(c.keys) or 'nothing'}",
        f"targets {', '.join(f'{t:.4g}' for t in c.targets)}: {c.target_source}",
        f"seconds: {c.seconds}",
        f"intervals ({percent}): speed-ups: {METHOD_NAMES[c.method]}, seeds resampled {c.resamples} times, jointly "
        "for two groups that ran the same seeds (paired), within each group otherwise (unpaired); "
        "metric means and differences: t intervals over seeds (differences of paired groups seed by seed, "
        "Welch otherwise)",
    ]


CAPTION = ("to target: where the seed-mean curve (mean over seeds at the evaluation steps all seeds share) "
           "first reaches the target, interpolated linearly between the two evaluations around the crossing; "
           "∞ = not reached; per seed: each seed's own interpolated steps; speed-up = baseline's (or reference's) "
           "amount / group's; * = a crossing (the group's, or the other group's for a speed-up) lies between the "
           "curve's first two evaluations, where linear interpolation of a rising, flattening curve overstates the "
           "amount (a fast group's speed-up is then likely understated: evaluate more often to resolve it); at "
           "budget: the metric read on each seed's curve at that many steps, tokens or seconds (linear between "
           "evaluations, never beyond a run's end), mean over seeds; mean metric "
           "over tokens: the area under each seed's metric-vs-tokens curve over the token range every run covers, "
           "divided by that range; final, best: median over seeds (min–max)")


def print_table(c: Comparison) -> None:
    """Print the comparison as rich tables on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = Console()
    if not console.is_terminal:
        console.width = 320  # a pipe or file: no wrapping of the wide tables
    for line in headline(c):
        console.print(escape(line), highlight=False)
    width = min(40, max(len(group_name(g)) for g in c.groups))
    for i, (title, headers, rows) in enumerate(tables(c)):
        table = RichTable(title=escape(title), caption=escape(CAPTION) if i == 1 else None, title_justify="left")
        for j, header in enumerate(headers):
            table.add_column(escape(header), overflow="fold", justify="left" if j < 2 else "right",
                             min_width=width if header == "group" else None)
        for row in rows:
            table.add_row(*map(escape, row))
        console.print(table)


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(h.replace("\n", " ") for h in headers) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(headers) - 2)) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def render_markdown(c: Comparison) -> str:
    """The comparison as a markdown document: what was compared, warnings, three tables."""
    lines = ["# lrn compare", "", *(f"- {line}." for line in headline(c)), ""]
    lines += [*(f"**{w}**" for w in c.warnings), ""] if c.warnings else []
    lines += [f"{CAPTION}.", ""]
    for title, headers, rows in tables(c):
        lines += [f"## {title}", "", *markdown_table(headers, rows), ""]
    return "\n".join(lines)


def interval_columns(name: str, e: Estimate | None) -> list[Any]:
    """A value and its interval for CSV: empty where undefined."""
    if e is None:
        return ["", "", ""]
    return [e.value, "" if e.lo is None else e.lo, "" if e.hi is None else e.hi]


def write_csv(c: Comparison, path: Path) -> None:
    """One row per group and target, raw numbers: inf = not reached, empty = undefined, per-seed values
    joined by ``;`` in seed order; ``_interp`` = interpolated between evaluations; ``_lo``/``_hi`` = the
    interval's ends (c.level)."""
    ref = c.reference is not None
    ends = ("", "_lo", "_hi")
    header = ["group", "baseline", "reference", "runs", "seeds", "pairing", "pairing_reference", "target",
              "target_fraction", "reached", *(f"{k}_to_target_interp" for k in KINDS),
              *(f"{k}_to_target_interp_per_seed" for k in KINDS), "early_crossing",
              *(f"speedup_{k}{e}" for k in KINDS for e in ends),
              *((f"speedup_{k}_vs_reference{e}" for k in KINDS for e in ends) if ref else ()),
              *(f"{s}_{m}" for s in ("final", "best") for m in ("median", "min", "max")), "seconds_per_step",
              *(f"area_tokens{e}" for e in ends), *(f"area_tokens_delta{e}" for e in ends),
              *((f"area_tokens_delta_reference{e}" for e in ends) if ref else ()),
              "area_tokens_from", "area_tokens_to", "metric", "seconds_source", "interval_method", "level"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, t in enumerate(c.targets):
            for g in c.groups:
                r = g.targets[i]
                writer.writerow([
                    g.label, g.baseline, g.reference, len(g.runs), ";".join(map(str, g.seeds)), g.pairing,
                    g.pairing_reference, t, "" if r.fraction is None else r.fraction, r.reached,
                    *(r.to_target[k] for k in KINDS), *(";".join(map(str, r.per_seed[k])) for k in KINDS), r.early,
                    *(x for k in KINDS for x in interval_columns(k, r.speedup.get(k))),
                    *((x for k in KINDS for x in interval_columns(k, r.vs_reference.get(k))) if ref else ()),
                    *(x for s in (g.final, g.best) for x in (s.median, s.lo, s.hi)), g.seconds_per_step,
                    *interval_columns("area", g.area), *interval_columns("delta", g.area_delta),
                    *(interval_columns("delta", g.area_delta_reference) if ref else ()),
                    *c.area_range, c.metric, c.seconds, c.method, c.level])


def write_budgets_csv(c: Comparison, path: Path) -> None:
    """One row per group and budget: the metric's value there (mean over seeds, interval, per seed; nan =
    the seed's run ends before the budget) and its differences to the baseline (and reference)."""
    ref = c.reference is not None
    ends = ("", "_lo", "_hi")
    header = ["group", "baseline", "reference", "pairing", "kind", "budget", "budget_share", "covered",
              *(f"value{e}" for e in ends), "value_per_seed", *(f"delta{e}" for e in ends),
              *((f"delta_reference{e}" for e in ends) if ref else ()), "metric"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for kind, pairs in c.budgets.items():
            for b, share in pairs:
                for g in c.groups:
                    r = next(x for x in g.budgets if x.kind == kind and x.budget == b)
                    writer.writerow([g.label, g.baseline, g.reference, g.pairing, kind, b,
                                     "" if share is None else share, sum(not math.isnan(v) for v in r.per_seed),
                                     *interval_columns("m", r.accuracy), ";".join(map(str, r.per_seed)),
                                     *interval_columns("d", r.delta),
                                     *(interval_columns("d", r.delta_reference) if ref else ()), c.metric])


def band(g: GroupSummary, metric: str) -> tuple[list[float], list[float]]:
    """The lowest and highest seed's value at each step of the group's seed-mean curve."""
    curves = [run_curve(r.rows, metric) for r in g.runs]
    values = [[c.value[c.step.index(s)] for c in curves] for s in g.curve.step]
    return [min(v) for v in values], [max(v) for v in values]


def plot(c: Comparison, path: Path) -> None:
    """Two panels, metric vs step and vs generated tokens: seed-mean curve, min–max band, the targets
    (dashed) with each group's interpolated crossings (x), and the token range of the area (dotted)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5))
    axes = fig.subplots(1, 2)
    x_axes = (("steps", "step"), ("tokens", "generated tokens (screening included)"))
    for ax, (kind, x_label) in zip(axes, x_axes, strict=True):
        for i, g in enumerate(c.groups):
            x, color = getattr(g.curve, KINDS[kind]), f"C{i % 10}"
            lo, hi = band(g, c.metric)
            label = f"{group_name(g)} (n={len(g.runs)})"
            ax.plot(x, g.curve.value, color=color, label=label, marker="o" if len(x) == 1 else None)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
            for r in g.targets:
                if math.isfinite(r.to_target[kind]):
                    ax.plot([r.to_target[kind]], [r.target], color=color, marker="x", markersize=8)
        for t in c.targets:
            ax.axhline(t, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xlabel(x_label)
        ax.set_ylabel(c.metric)
        ax.grid(alpha=0.3)
    for x in c.area_range:
        axes[1].axvline(x, color="gray", linestyle=":", linewidth=0.8)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{c.metric}: mean over seeds, band = min–max over seeds, dashed = targets, x = interpolated "
                 "crossings, dotted = token range of the mean metric")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(c: Comparison, out: Path) -> list[Path]:
    """Write compare.md, compare.csv, compare_budgets.csv and compare.png into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "compare.md", out / "compare.csv", out / "compare_budgets.csv", out / "compare.png"]
    paths[0].write_text(render_markdown(c))
    write_csv(c, paths[1])
    write_budgets_csv(c, paths[2])
    plot(c, paths[3])
    return paths
