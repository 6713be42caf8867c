-- tether: the agent's monitoring account. Run on BOTH databases.
-- (MariaDB 10.5+ privilege names.) It reads replication status, restarts the IO thread when the link returns, and writes
-- its heartbeat row in the `tether` schema. Replace {{PASSWORD}}.
CREATE DATABASE IF NOT EXISTS tether;
CREATE USER IF NOT EXISTS 'tether'@'%' IDENTIFIED BY '{{PASSWORD}}';
CREATE USER IF NOT EXISTS 'tether'@'localhost' IDENTIFIED BY '{{PASSWORD}}';
CREATE USER IF NOT EXISTS 'tether'@'127.0.0.1' IDENTIFIED BY '{{PASSWORD}}';
GRANT REPLICATION CLIENT, REPLICATION SLAVE ADMIN, SLAVE MONITOR, BINLOG MONITOR, PROCESS ON *.* TO 'tether'@'%';
GRANT REPLICATION CLIENT, REPLICATION SLAVE ADMIN, SLAVE MONITOR, BINLOG MONITOR, PROCESS ON *.* TO 'tether'@'localhost';
GRANT REPLICATION CLIENT, REPLICATION SLAVE ADMIN, SLAVE MONITOR, BINLOG MONITOR, PROCESS ON *.* TO 'tether'@'127.0.0.1';
GRANT ALL ON tether.* TO 'tether'@'%';
GRANT ALL ON tether.* TO 'tether'@'localhost';
GRANT ALL ON tether.* TO 'tether'@'127.0.0.1';
