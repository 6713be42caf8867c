-- tether: the replication account. Run on BOTH databases (each replicates from the other).
-- Replace {{PASSWORD}} with a strong password; use the same one in CHANGE MASTER on the peer.
-- It is created for '%' and for the loopback names too: a fresh MariaDB's anonymous users
-- would otherwise shadow '%' for connections through the tunnel (which arrive from 127.0.0.1).
CREATE USER IF NOT EXISTS 'repl'@'%' IDENTIFIED BY '{{PASSWORD}}';
CREATE USER IF NOT EXISTS 'repl'@'localhost' IDENTIFIED BY '{{PASSWORD}}';
CREATE USER IF NOT EXISTS 'repl'@'127.0.0.1' IDENTIFIED BY '{{PASSWORD}}';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'localhost';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';
