-- tether: the replication account, for MySQL (8.0.23 or later). Run on BOTH databases
-- (each replicates from the other). Replace {{PASSWORD}} with a strong password; use the
-- same one in CHANGE REPLICATION SOURCE on the peer. caching_sha2_password is MySQL's
-- default: the replica's GET_SOURCE_PUBLIC_KEY=1 lets it log in over the tunnel's plain
-- TCP after a restart has emptied the server's password cache (else error 2061).
CREATE USER IF NOT EXISTS 'repl'@'%' IDENTIFIED WITH caching_sha2_password BY '{{PASSWORD}}';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
