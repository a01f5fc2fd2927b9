-- MLflow's basic-auth users and permissions live in their own database
-- (docker/mlflow/basic_auth.ini), beside the tracking store. The postgres
-- image runs this once, when it initialises an empty data volume.
CREATE DATABASE mlflow_auth;
