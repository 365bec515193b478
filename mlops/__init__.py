"""prefect-mlops: a retraining pipeline for tabular models on Prefect, Dask, LightGBM and MLflow."""

__version__ = "0.1.0"
