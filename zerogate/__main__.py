"""``python -m zerogate``: the same as the ``zerogate`` console script."""

from zerogate.cli import app

if __name__ == "__main__":  # not when multiprocessing's spawn imports it in a worker
    app()
