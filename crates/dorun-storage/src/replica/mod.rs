//! Replication of objects' commits to an S3-compatible store (issue 26; ARCHITECTURE.md,
//! "Replication and clusters"). What exists so far is the data path's first half, with no
//! I/O of its own: reading committed transactions out of an object's WAL ([`wal`]) and the
//! LTX files they are shipped and restored as ([`ltx`]).

pub mod ltx;
pub mod wal;
