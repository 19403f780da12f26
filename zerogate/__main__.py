"""``python -m zerogate``: the same as the ``zerogate`` console script."""

from zerogate.cli import app

app()
