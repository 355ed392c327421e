//! The replidb server: configuration, the RESP protocol, client sessions, and the network
//! loop. The binary (`main.rs`) is a thin CLI over this library, which tests and fuzz
//! targets use directly.

#![forbid(unsafe_code)]

pub mod archive;
pub mod backup;
pub mod bench;
pub mod blocking;
pub mod client;
pub mod cluster_demo;
pub mod commands;
pub mod compaction;
pub mod config;
pub mod cursor;
pub mod early;
pub mod glob;
pub mod info;
pub mod metrics;
pub mod model;
pub mod reply;
pub mod resp;
pub mod restore;
pub mod server;
pub mod session;
pub mod shared;
pub mod sweep;
pub mod watch;
