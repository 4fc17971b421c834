//! wspoold keeps pools of WebSocket connections to upstream services alive and heals
//! them without a human. See `DESIGN` in the README for how the threads fit together.

pub mod admin;
pub mod alert;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod event;
pub mod faults;
pub mod flap;
pub mod health;
pub mod incident;
pub mod journal;
pub mod listener;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod pool;
pub mod review;
pub mod room;
pub mod session;
pub mod status;
pub mod upstream;
pub mod worker;
