"""``python -m target_everflow`` is the ``target-everflow`` command."""

from target_everflow.cli import main

main()
