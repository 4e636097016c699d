"""``azureml.core.model.Model`` for entry scripts run by parallel-run: model paths come from the
job's ``models:`` key (name, or name:version, to a local path), passed to the worker as JSON in
the environment variable ``PARALLEL_RUN_MODELS``: ``{"name": {"version": "path"}}``."""

import json
import os

MODELS_ENV = "PARALLEL_RUN_MODELS"


class ModelNotFoundException(Exception):
    """No model of that name (and version) is known to this job."""


def _models():
    try:
        models = json.loads(os.environ.get(MODELS_ENV) or "{}")
    except ValueError:
        return {}
    return models if isinstance(models, dict) else {}


def _version_key(version):
    try:
        return (0, int(version))
    except (TypeError, ValueError):
        return (1, str(version))


class Model:
    """The model registry of a parallel-run job (see the module docs)."""

    def __init__(self, workspace=None, name=None, id=None, tags=None, properties=None, version=None, **kwargs):
        self.workspace = workspace
        self.name = name
        self.version = version
        self.path = Model.get_model_path(name, version) if name else None

    def __repr__(self):
        return "Model(name=%r, version=%r, path=%r)" % (self.name, self.version, self.path)

    @staticmethod
    def get_model_path(model_name, version=None, _workspace=None):
        """The local path of ``model_name`` (its highest version unless ``version`` is given)."""
        models = _models()
        versions = models.get(model_name)
        if not versions:
            known = ", ".join(
                "%s:%s" % (name, v) for name in sorted(models) for v in sorted(models[name], key=_version_key)
            )
            raise ModelNotFoundException(
                "Model %r is not known to this job (known models: [%s]); add it to the job "
                "file's models: key, e.g. models: {%s: ./path/to/model}"
                % (model_name, known, model_name)
            )
        if version is None:
            version = max(versions, key=_version_key)
        path = versions.get(str(version))
        if path is None:
            raise ModelNotFoundException(
                "Model %r has no version %r in this job (versions: %s)"
                % (model_name, version, ", ".join(sorted(versions, key=_version_key)))
            )
        return path
