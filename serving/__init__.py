"""The model-serving microservice: MLflow's scoring protocol over the registry's champion."""
