"""Terminal output: a progress bar with the latest reward and accuracy, and the end-of-run summary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)


class TrainProgress:
    """A rich progress bar over training steps (silent when disabled)."""

    def __init__(self, steps: int, enabled: bool = True):
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console, disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=steps, info="")
        self.accuracy: float | None = None
        self.progress.start()

    def update(self, step: int, row: dict, acc_key: str) -> None:
        self.accuracy = row.get(acc_key, self.accuracy)
        info = []
        if "train/reward_mean" in row:
            info.append(f"reward {row['train/reward_mean']:.3f}")
        if self.accuracy is not None:
            info.append(f"acc {self.accuracy:.3f}")
        self.progress.update(self.task, completed=step, info="  ".join(info))

    def close(self) -> None:
        self.progress.stop()


def print_summary(summary: dict) -> None:
    """A one-screen summary of a finished run."""
    table = Table(title=f"lrn train: {summary['sampler']} (seed {summary['seed']})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("steps", str(summary["steps"]))
    table.add_row(summary["metric"], f"{summary['accuracy_start']:.3f} -> {summary['accuracy_final']:.3f} "
                  f"(best {summary['accuracy_best']:.3f} at step {summary['best_step']})")
    table.add_row("rollouts generated", f"{summary['counts/rollouts_total']:,}")
    table.add_row("tokens generated", f"{summary['counts/tokens_generated_total']:,}")
    table.add_row("wall time", f"{summary['wall_s']:.0f} s")
    table.add_row("run directory", summary["run_dir"])
    console.print(table)


def print_eval(metrics: dict[str, float], n: int, out) -> None:
    """The table `lrn eval` prints: one row per metric."""
    table = Table(title=f"lrn eval ({n} questions)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)
    console.print(f"records and summary written to {out}")


@contextmanager
def eval_progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar over generated answers; yields the function that advances it."""
    with Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("eval", total=total)
        yield lambda n: progress.advance(task, n)
