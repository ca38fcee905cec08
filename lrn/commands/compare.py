"""`lrn compare`: the command-line face of ``lrn/compare.py`` (docs/compare.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrn.commands import fail
from lrn.curves import FRACTIONS
from lrn.intervals import METHOD, METHODS


def number_list(option: str, text: str | None) -> list[float] | None:
    """``0.3,0.35`` to numbers; exit 2 naming the option on anything else."""
    if text is None:
        return None
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        fail(f"{option} {text!r}: not a comma list of numbers; pass e.g. {option} 0.3,0.35")
    if not values:
        fail(f"{option} is empty; pass a comma list of numbers, e.g. {option} 0.3,0.35")
    return values


def compare(
    dirs: Annotated[list[Path], typer.Argument(
        metavar="DIR", show_default=False,
        help="Run directories and/or sweep directories (searched for metrics.jsonl).")],
    by: Annotated[str | None, typer.Option(
        metavar="KEYS", help="Comma-separated config keys to group by, e.g. sampler.name,ppo.lr.",
        show_default="every key that differs, except seed, run_name, logger.*, eval.*")] = None,
    baseline: Annotated[str, typer.Option(
        metavar="SPEC", help="key=value[,key=value] picking the baseline group; a bare group name means "
        "<group>.name.")] = "sampler=uniform",
    reference: Annotated[str | None, typer.Option(
        metavar="SPEC", help="A second group every ratio and difference is also given against (e.g. the "
        "better uniform), with its own intervals; same syntax as --baseline.")] = None,
    metric: Annotated[str | None, typer.Option(
        metavar="KEY", help="Metric to compare.", show_default="the single eval/<set>/accuracy")] = None,
    targets: Annotated[str | None, typer.Option(
        metavar="X,Y,...", help="Target values of the metric, instead of the grid.",
        show_default="--fractions of the way from the baseline's start to its plateau")] = None,
    target: Annotated[float | None, typer.Option(help="A single target (same as --targets X).")] = None,
    fractions: Annotated[str, typer.Option(
        metavar="F,G,...", help="The default grid: these fractions of the way from the baseline's start (seed "
        "mean at its first evaluation) to its plateau (mean of its seed-mean curve's last quarter).")
    ] = ",".join(f"{f:g}" for f in FRACTIONS),
    budget_steps: Annotated[str | None, typer.Option(
        metavar="N,...", help="Step budgets for the metric-at-budget table.",
        show_default="25%, 50%, 100% of the baseline's shortest seed")] = None,
    budget_tokens: Annotated[str | None, typer.Option(
        metavar="N,...", help="Generated-token budgets.", show_default="as for steps")] = None,
    budget_seconds: Annotated[str | None, typer.Option(
        metavar="S,...", help="Training-second budgets.", show_default="as for steps")] = None,
    unpaired: Annotated[bool, typer.Option(
        "--unpaired", help="Resample seeds within each group even where groups ran the same seeds.")] = False,
    interval: Annotated[str, typer.Option(
        metavar="METHOD", help=f"Speed-up interval method: {', '.join(METHODS)} (docs/compare.md: calibration).")
    ] = METHOD,
    out: Annotated[Path | None, typer.Option(
        help="Folder for compare.md, compare.csv, compare_budgets.csv and compare.png.",
        show_default="<first DIR>/compare")] = None,
) -> None:
    """Steps, tokens and seconds to a grid of targets, the metric at fixed budgets, and the mean metric over
    tokens, per group of runs, with intervals on every ratio and difference (docs/compare.md).

    Runs evaluated differently (eval.limit, eval.samples, trainer.eval_every, the held-out dataset.*) are refused.
    """
    from lrn.compare import CompareError, compare_dirs
    from lrn.report import print_table, write_outputs

    if interval not in METHODS:
        fail(f"--interval {interval!r} is unknown: allowed {', '.join(METHODS)}")
    budgets = {k: v for k, v in (("steps", number_list("--budget-steps", budget_steps)),
                                 ("tokens", number_list("--budget-tokens", budget_tokens)),
                                 ("seconds", number_list("--budget-seconds", budget_seconds))) if v is not None}
    try:
        result = compare_dirs(dirs, by=by, baseline=baseline, metric=metric, target=target,
                              targets=number_list("--targets", targets),
                              fractions=number_list("--fractions", fractions), budgets=budgets,
                              reference=reference, unpaired=unpaired, method=interval)
    except CompareError as e:
        fail(str(e))
    for warning in result.warnings:
        typer.echo(f"lrn: {warning}", err=True)
    print_table(result)
    out = out or dirs[0] / "compare"
    try:
        paths = write_outputs(result, out)
    except OSError as e:
        fail(f"cannot write to {out}: {e.strerror or e}; choose another --out")
    typer.echo(f"wrote {', '.join(map(str, paths))}")
