//! Replicas: branch-office servers that follow the canonical aptgate, verify every byte,
//! switch all channels at once and report their lag.
//!
//! | module | what it does |
//! |---|---|
//! | [`protocol`] | the wire contract between a replica and its parent (types, paths, verification) |
//! | [`batch`] | many small blobs in one answer: the frames a parent writes and a replica reads |
//! | [`canonical`] | the parent side on the canonical server: the numbered signed feed, blob and status routes, the replica table |
//! | [`replica`] | replica mode: sync, atomic switch, serving, reporting, and the parent side for chained replicas |

pub mod batch;
pub mod canonical;
pub mod protocol;
pub mod replica;

pub use canonical::Canonical;
pub use replica::Replica;
