#!/usr/bin/env bash
# Creates the dataset store next to Airflow's metadata DB in the compose stack's PostgreSQL: its own role
# and its own database, so the pipeline's data never lives in Airflow's tables and the store's role cannot
# open Airflow's database.
#
# The postgres image runs this from /docker-entrypoint-initdb.d once, when its data volume is new, as
# $POSTGRES_USER. Names and password come from LIGHTLY_STORE_DB / LIGHTLY_STORE_USER / LIGHTLY_STORE_PASSWORD
# (docker-compose.yaml passes them); they must match LIGHTLY_STORE_URL of the Airflow containers.
set -euo pipefail

: "${LIGHTLY_STORE_DB:?LIGHTLY_STORE_DB is not set}"
: "${LIGHTLY_STORE_USER:?LIGHTLY_STORE_USER is not set}"
: "${LIGHTLY_STORE_PASSWORD:?LIGHTLY_STORE_PASSWORD is not set}"

echo "init-lightly-store: creating role '${LIGHTLY_STORE_USER}' and database '${LIGHTLY_STORE_DB}'"
# psql variables (:"name" quotes an identifier, :'name' a literal) keep the values out of the SQL text.
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  --set store_db="${LIGHTLY_STORE_DB}" \
  --set store_user="${LIGHTLY_STORE_USER}" \
  --set store_password="${LIGHTLY_STORE_PASSWORD}" \
  --set airflow_db="${POSTGRES_DB:-postgres}" <<'SQL'
CREATE ROLE :"store_user" LOGIN PASSWORD :'store_password';
CREATE DATABASE :"store_db" OWNER :"store_user";
REVOKE ALL ON DATABASE :"store_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;
SQL
