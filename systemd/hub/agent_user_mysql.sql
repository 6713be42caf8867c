-- tether: the agent's monitoring account, for MySQL (8.0.23 or later). Run on BOTH
-- databases. It reads replication status (REPLICATION CLIENT), restarts the IO thread when
-- the link returns (REPLICATION_SLAVE_ADMIN), reads the applier workers' errors and the
-- connection settings from performance_schema, and writes its heartbeat row in the
-- `tether` schema; nothing else. Replace {{PASSWORD}}.
CREATE DATABASE IF NOT EXISTS tether;
CREATE USER IF NOT EXISTS 'tether'@'%' IDENTIFIED WITH caching_sha2_password BY '{{PASSWORD}}';
GRANT REPLICATION CLIENT, REPLICATION_SLAVE_ADMIN ON *.* TO 'tether'@'%';
GRANT SELECT ON performance_schema.replication_applier_status_by_worker TO 'tether'@'%';
GRANT SELECT ON performance_schema.replication_connection_configuration TO 'tether'@'%';
GRANT SELECT, INSERT, UPDATE, CREATE ON tether.* TO 'tether'@'%';
