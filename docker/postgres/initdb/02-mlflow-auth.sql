-- Run on the first start (empty data volume): the tracking server's users and permissions
-- (MLflow's basic-auth app, docker/mlflow/basic_auth.ini). On a volume made before it:
--   docker compose -f docker/docker-compose.yml exec postgres createdb -U mlflow mlflow_auth
CREATE DATABASE mlflow_auth;
