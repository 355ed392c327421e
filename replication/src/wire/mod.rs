//! The replication protocol on the wire: the frame codec (`frame`, fuzzed), moving frames
//! over sockets (`io`), and the handshake every connection starts with (`handshake`).

pub mod frame;
#[cfg(not(loom))]
pub(crate) mod handshake;
#[cfg(not(loom))]
pub(crate) mod io;
#[cfg(not(loom))]
pub mod transport;
