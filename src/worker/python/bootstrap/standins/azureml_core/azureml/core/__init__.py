"""A stand-in for the parts of ``azureml.core`` that ParallelRunStep entry scripts use, put on
the worker's import path by parallel-run only when the real azureml-core is not installed.

- ``from azureml.core.model import Model``; ``Model.get_model_path(name, version=None)`` returns
  the local path of a model named in the job's ``models:`` key.
- ``from azureml.core import Run``; ``Run.get_context()`` returns an offline run whose
  ``log``, ``log_list``, ``log_row`` and ``log_table`` write metrics to
  ``logs/user/metrics/<node>/<process>.jsonl``.
"""

from azureml.core.model import Model
from azureml.core.run import Run

__all__ = ["Model", "Run"]
