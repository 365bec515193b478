"""prefect-mlops: a retraining pipeline for tabular models on Prefect, Dask and MLflow.

The repository's top-level folders (cli/, flows/, tasks/, serving/, model_registry/, infra/,
mlops/) are this package's subpackages once installed (see setup.py).
"""
