"""``python -m target_everflow`` is the ``target-everflow`` command."""

from target_everflow.adapter.cli import main

main()
