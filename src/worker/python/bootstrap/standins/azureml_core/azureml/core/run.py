"""``azureml.core.Run`` for entry scripts run by parallel-run: ``Run.get_context()`` is an
offline run. Metrics are appended as JSON lines to
``<log_dir>/user/metrics/<node>/<process>.jsonl`` (one object per call: ``time``, ``run_id``,
``kind``, ``name``, ``value``, ``description``)."""

import json
import os
import threading
import time
import uuid

_CONFIG_ENV = "PARALLEL_RUN_WORKER"
_lock = threading.Lock()


def _config():
    try:
        config = json.loads(os.environ.get(_CONFIG_ENV) or "{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _metrics_path():
    config = _config()
    log_dir = config.get("log_dir")
    if not log_dir:
        return None
    return os.path.join(
        log_dir,
        "user",
        "metrics",
        config.get("node") or "node000",
        "%s.jsonl" % (config.get("agent_name") or "process000"),
    )


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        tolist = getattr(value, "tolist", None)
        if callable(tolist):
            return tolist()
        return str(value)


class Experiment:
    """The experiment an offline run belongs to."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return "Experiment(name=%r)" % self.name


class _OfflineRun:
    """A run that writes its metrics to parallel-run's logs."""

    def __init__(self, run_id, experiment, parent=None):
        self.id = run_id
        self.experiment = experiment
        self.parent = parent
        self.tags = {}
        self.properties = {}

    def __repr__(self):
        return "Run(id=%r, experiment=%r)" % (self.id, self.experiment.name)

    def _write(self, kind, name, value, description=""):
        path = _metrics_path()
        record = {
            "time": time.time(),
            "run_id": self.id,
            "kind": kind,
            "name": name,
            "value": _jsonable(value),
            "description": description or "",
        }
        if path is None:
            return
        with _lock:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def log(self, name, value, description="", step=None):
        self._write("metric", name, value, description)

    def log_list(self, name, value, description=""):
        self._write("list", name, list(value), description)

    def log_row(self, name, description=None, **kwargs):
        self._write("row", name, kwargs, description)

    def log_table(self, name, value, description=""):
        self._write("table", name, value, description)

    def log_image(self, name, path=None, plot=None, description=""):
        self._write("image", name, path, description)

    def tag(self, key, value=None):
        self.tags[key] = value

    def set_tags(self, tags):
        self.tags.update(tags)

    def add_properties(self, properties):
        self.properties.update(properties)

    def get_status(self):
        return "Running"

    def complete(self):
        pass

    def flush(self):
        pass


class Run:
    """``Run.get_context()`` (see the module docs)."""

    _context = None

    @classmethod
    def get_context(cls, allow_offline=True, **kwargs):
        with _lock:
            if cls._context is None:
                name = _config().get("job_name") or "parallel-run"
                experiment = Experiment(name)
                parent = _OfflineRun("OfflineRun_" + uuid.uuid4().hex, experiment)
                cls._context = _OfflineRun("OfflineRun_" + uuid.uuid4().hex, experiment, parent)
            return cls._context
