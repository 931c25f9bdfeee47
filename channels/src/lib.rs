//! Snapshots, channels and publishing.
//!
//! Built so far: the [`catalog`] — packages known by content (once per sha256, with when each
//! version was first seen), snapshots (immutable; membership held as content-addressed
//! manifest blobs, never one row per package) and the audit log — on SQLite or PostgreSQL.
//!
//! Still to come (issue "Snapshots, staged channels, promotion and signed publishing"): sync
//! creating snapshots, channels that point at snapshots (`testing`, `approved`, `site-…`),
//! promotion with holds, rollback and rules, and the signed apt repository each channel is
//! published as under `/channels/<channel>/`.

pub mod api;
pub mod catalog;
mod error;
pub mod index;
pub mod manifest;
pub mod routes;
mod service;
pub mod signing;
pub mod snapshots;

pub use error::{ChannelsError, Result};
pub use service::*;
