"""Compatibility package: Azure ML's ``azureml_user`` as provided by parallel-run."""
