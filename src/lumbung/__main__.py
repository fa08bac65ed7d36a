"""``python -m lumbung ...``: the same command line as the ``lumbung`` script."""

from lumbung.cli.main import app

app(prog_name="lumbung")
