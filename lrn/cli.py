"""The `lrn` command line: Typer commands whose arguments are Hydra overrides (`train`, `eval`) or options.

One module per command under ``lrn/commands/``: ``train`` (Hydra's entry point, run-directory locks,
multi-process launches), ``compare``, ``evaluate`` (`lrn eval`) and ``grade``.
"""

from __future__ import annotations

import typer

from lrn.commands import HYDRA_ARGS
from lrn.commands.compare import compare
from lrn.commands.evaluate import eval_command
from lrn.commands.grade import grade
from lrn.commands.train import train

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="RL fine-tuning (PPO) of language models on maths, with sampling for learnability.")


@app.callback()
def main() -> None:
    """RL fine-tuning (PPO) of language models on maths, with sampling for learnability."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file weight-loading bars drown the training progress bar


app.command(context_settings=HYDRA_ARGS)(train)
app.command()(compare)
app.command(name="eval", context_settings=HYDRA_ARGS)(eval_command)
app.command()(grade)

if __name__ == "__main__":  # pragma: no cover
    app()
