-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as the
-- POSTGRES_USER `capstan`, which therefore owns every database.
-- One database per service that keeps read models (CAPSTAN_DATABASE_URL in docker-compose.yml);
-- the gateway and the agents keep none.
CREATE DATABASE scheduler;
CREATE DATABASE trainer;
CREATE DATABASE registry;
CREATE DATABASE inference;
