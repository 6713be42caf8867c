//! Real servers for tests and the lab: MariaDB, sshd, mosquitto, and the link simulator.
