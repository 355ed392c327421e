//! Base backups (PostgreSQL's basebackup.c): serving one (`serve`), fetching and laying one
//! down (`fetch`), and swapping one in place of a running replica's database (`swap`).

pub(crate) mod fetch;
pub(crate) mod serve;
pub(crate) mod swap;

pub use fetch::seed_if_new;
pub use serve::serve_snapshot;
