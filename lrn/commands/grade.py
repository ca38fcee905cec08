"""`lrn grade`: re-grade saved completions with the graders training uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrn.commands import fail, one_line
from lrn.config import ConfigError, compose


def grade(
    file: Annotated[Path, typer.Argument(help="JSON lines with a completion (or list of them) and a gold answer.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        metavar="[dataset=NAME]", help="Take the grader from this dataset config.")] = None,
    grader: Annotated[str | None, typer.Option(help="integer | numeric | math (overrides the dataset's).")] = None,
    completion_field: Annotated[str, typer.Option(help="Field holding the completion text(s).")] = "completion",
    answer_field: Annotated[str, typer.Option(help="Field holding the gold answer.")] = "answer",
    answer_rule: Annotated[str, typer.Option(
        help="Read the gold as raw text, gsm8k (after ####) or boxed (last \\boxed{}).")] = "raw",
    out: Annotated[Path | None, typer.Option(help="Graded rows.", show_default="<FILE>.graded.jsonl")] = None,
) -> None:
    """Re-grade saved completions with the graders training uses; writes per-row rewards and the accuracy."""
    from lrn.grading import GRADERS
    from lrn.regrade import Fields, regrade

    name = grader
    if name is None:
        dataset = [o.split("=", 1)[1] for o in overrides or [] if o.startswith("dataset=")]
        if not dataset:
            fail("lrn grade needs a grader: give dataset=<gsm8k|math|math500|arithmetic|jsonl> or --grader")
        try:
            name = compose([f"dataset={dataset[-1]}"]).dataset.grader
        except Exception as e:  # noqa: BLE001 - Hydra's composition errors
            fail(one_line(e))
    if name not in GRADERS:
        fail(f"--grader={name!r} is unknown: allowed {', '.join(sorted(GRADERS))}")
    out = out or file.with_name(file.stem + ".graded.jsonl")
    try:
        summary = regrade(file, name, Fields(completion_field, answer_field, answer_rule), out)
    except ConfigError as e:
        fail(str(e))
    typer.echo(f"accuracy {summary['accuracy']:.4f} over {summary['rows']} rows ({summary['completions']} "
               f"completions, grader {name}); wrote {out}")
