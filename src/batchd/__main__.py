"""``python -m batchd``: the ``batchd`` command."""

from batchd.cli import main

main()
