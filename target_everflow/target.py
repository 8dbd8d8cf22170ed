"""The Singer target's import path before the adapter package: ``TargetEverflow`` lives in
``target_everflow.adapter.target`` (everything that touches singer-sdk is in the adapter); this
name keeps working for programmatic callers and embedding code."""

from target_everflow.adapter.target import TargetEverflow

__all__ = ["TargetEverflow"]
