"""``python -m lrn``: the `lrn` command, for launchers that run a module (``torchrun -m lrn train ...``)."""

from lrn.cli import app

app()
