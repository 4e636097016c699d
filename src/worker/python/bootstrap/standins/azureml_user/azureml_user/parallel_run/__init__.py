"""Azure ML's ``azureml_user.parallel_run`` module, as provided by parallel-run.

``from azureml_user.parallel_run import EntryScript`` keeps working unchanged.
"""

from _prs_entry_script import EntryScript

__all__ = ["EntryScript"]
