"""The commands of `lrn` (one module each) and what they share: one-line errors with exit code 2.

``lrn/cli.py`` builds the Typer app from them.
"""

from __future__ import annotations

import typer

HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def fail(message: str) -> None:
    """Print one line and exit with code 2 (bad input), never a traceback."""
    typer.echo(f"lrn: error: {message}", err=True)
    raise SystemExit(2)


def one_line(error: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines; keep the lines that say what is wrong."""
    options = getattr(error, "options", None)
    missing = getattr(error, "missing_cfg_file", None)
    if options and missing and "/" in missing:
        group, name = missing.rsplit("/", 1)
        return f"{group}={name}: no such option; available: {', '.join(sorted(options))}"
    skip = ("full_key", "object_type", "reference_type", "config search path", "set the environment")
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.lower().startswith(skip) and not ln.startswith(("-", "provider"))]
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        lines.append(f"({one_line(cause)})")
    return " ".join(lines) or type(error).__name__
