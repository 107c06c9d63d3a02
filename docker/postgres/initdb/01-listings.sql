-- Run by the postgres image's entrypoint on the first start (empty data volume), as
-- POSTGRES_USER, who owns the new database. `mlflow` (POSTGRES_DB) is MLflow's backend store;
-- `listings` holds the listings a data source can read, e.g. the synthetic tables:
--   docker compose -f docker/docker-compose.yml run --rm trainer \
--     python -m steps.generate --url postgresql+psycopg://mlflow@postgres:5432/listings
-- then DATA_SOURCE=postgresql+psycopg://mlflow@postgres:5432/listings in docker/.env.
CREATE DATABASE listings;
-- `predictions`: the gateway's prediction store (PREDICTION_STORE_URL): every priced row and
-- realized price; its tables are created by the first gateway that connects.
CREATE DATABASE predictions;
