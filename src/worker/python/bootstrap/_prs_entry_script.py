"""EntryScript: the ParallelRunStep helper object, as parallel-run provides it.

Entry scripts reach it as ``from azureml_user.parallel_run import EntryScript`` (the Azure ML
name, so unchanged scripts work) or ``from parallel_run import EntryScript``. Both names return
the same singleton.

Inside a parallel-run worker the facts come from the worker's configuration (environment
variable ``PARALLEL_RUN_WORKER``, JSON). Outside a worker (e.g. a script's own unit tests) the
object still works: paths default to the current folder and the logger writes to stderr.
"""

import json
import logging
import os
import threading

_CONFIG_ENV = "PARALLEL_RUN_WORKER"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _worker_config():
    try:
        config = json.loads(os.environ.get(_CONFIG_ENV) or "{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


class EntryScript:
    """A singleton describing the worker the entry script runs in.

    Attributes: ``logger`` (a ``logging.Logger`` writing to
    ``<log_dir>/user/entry_script_log/<node>/<agent_name>.log.txt``), ``log_dir``,
    ``output_dir`` (the job's output folder, also ``$AZUREML_BI_OUTPUT_PATH``), ``working_dir``,
    ``agent_name`` (``process000``, ...), ``node_id`` and ``config`` (a dict of the worker's
    settings).
    """

    _instance = None
    _lock = threading.Lock()

    def __new__(cls, *args, **kwargs):
        with cls._lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._setup()
                cls._instance = instance
        return cls._instance

    def __init__(self, *args, **kwargs):
        # Everything is set once, in __new__: the singleton must not be reset by later calls.
        pass

    def _setup(self):
        config = _worker_config()
        self.config = config
        self.agent_name = config.get("agent_name") or "process000"
        self.node_id = config.get("node") or "node000"
        self.log_dir = config.get("log_dir") or os.path.abspath("logs")
        self.output_dir = (
            config.get("output_dir") or os.environ.get("AZUREML_BI_OUTPUT_PATH") or os.getcwd()
        )
        self.working_dir = config.get("working_dir") or os.getcwd()
        self.logger = self._make_logger(config)

    def _make_logger(self, config):
        logger = logging.getLogger("parallel_run.entry_script")
        logger.setLevel(config.get("logging_level") or "INFO")
        # Not propagated: the root logger goes to the stderr log already.
        logger.propagate = False
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        path = config.get("entry_script_log")
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
        else:
            handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        logger.addHandler(handler)
        return logger

    def __repr__(self):
        return "EntryScript(agent_name=%r, log_dir=%r, output_dir=%r, working_dir=%r)" % (
            self.agent_name,
            self.log_dir,
            self.output_dir,
            self.working_dir,
        )
