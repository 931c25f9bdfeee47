//! Replica mirrors.
//!
//! This crate will own the replica sync engine (fetch the canonical server's published channel
//! manifests, download only the blobs this replica lacks, verify them, switch atomically, serve
//! the same signed bytes) and the canonical side's manifest and lag-report endpoints.
//! Nothing is implemented yet.
