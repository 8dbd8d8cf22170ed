"""``python -m target_everflow`` is the ``target-everflow`` command."""

from target_everflow.target import TargetEverflow

TargetEverflow.cli()
