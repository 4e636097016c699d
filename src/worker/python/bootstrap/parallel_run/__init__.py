"""parallel-run's helpers for entry scripts: ``from parallel_run import EntryScript``."""

from _prs_entry_script import EntryScript

__all__ = ["EntryScript"]
