//! End-to-end tests of the daemon: real upstream servers and a fault relay on
//! loopback, the daemon in-process (observed) or as the built binary.

mod binary;
mod blackhole;
mod bridge;
mod failover;
mod faults;
mod heal;
mod idle;
mod incidents;
mod receiver;
mod service;
mod soak;
mod syslog;
mod util;
