-- Run once by the postgres image, on an empty data volume (compose.yaml mounts this folder at
-- /docker-entrypoint-initdb.d). One database per component, all owned by POSTGRES_USER.
CREATE DATABASE prefect;      -- the Prefect server
CREATE DATABASE mlflow;       -- MLflow's tracking store and model registry
CREATE DATABASE mlflow_auth;  -- MLflow's basic-auth users and permissions
CREATE DATABASE mlops;        -- the allocator's run history and the inference log
