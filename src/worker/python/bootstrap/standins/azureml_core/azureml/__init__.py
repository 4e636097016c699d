"""The ``azureml`` namespace, as parallel-run's stand-in for ``azureml.core`` provides it.

``azureml`` is shared by many packages (azureml-core, azureml-dataprep, ...): this file only
extends the namespace, so whichever of them are installed stay importable beside the stand-in.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
