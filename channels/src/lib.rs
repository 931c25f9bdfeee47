//! Snapshots, channels and publishing.
//!
//! The [`catalog`] holds the metadata (packages once per sha256, snapshots, channels, history,
//! holds, the audit log) on SQLite or PostgreSQL; membership lives in content-addressed
//! [`manifest`] blobs, never one row per package. [`Channels`] is the service every operation
//! runs on; each concept has its own file:
//!
//! | file | what it does |
//! |---|---|
//! | `service.rs` | the [`Channels`] state and how it is opened |
//! | `registry.rs` | channel definitions (configured or created through the API) and their state |
//! | `sync.rs` | sync: verified upstream indices → packages recorded → snapshot → followers moved |
//! | `uploads.rs`, `deb.rs` | local sources: `.deb` uploads checked, stored, recorded; the indices their syncs list |
//! | `snapshots.rs` | snapshot lookup and derived snapshots: filter, merge, pull, publish |
//! | `derive.rs` | derived manifests: overlays and dependency closure for `--only` and pulls |
//! | `diff.rs` | what changes between two snapshots |
//! | `promote.rs` | promotion (whole with holds, or selected packages) |
//! | `plan.rs` | what a move would do (diff, newest versions), computed without moving |
//! | `auto_approve.rs` | promotion of versions first seen long enough ago |
//! | `moves.rs` | the one place a channel moves (the audited transaction), rollback |
//! | `resign.rs` | re-signing current and past publications before `Valid-Until`, after key changes |
//! | `publish.rs` | rendering and signing a channel's Release files |
//! | `holds.rs` | packages kept at a channel's version |
//! | `retention.rs` | which snapshots are kept; storing packages (upstream, fallback origins) |
//! | `rescue.rs` | storing referenced packages as they leave upstream's index |
//! | `verify.rs` | `channel verify`: where every package of a channel is |
//! | `gc.rs` | garbage collection and `store usage` |
//! | `keys.rs` | signing key rotation |
//! | `serve.rs` | what `/channels/…` serves, with its caches |
//! | `table.rs` | package tables: each index's packages, compact and sorted |
//! | `replica_view.rs` | what the replica feed reads: published Release files, by-hash grace, signing |
//! | `fleet_view.rs` | what the fleet reads of channels: suites, newest versions, keys |
//! | `routes.rs`, `api.rs` | the HTTP routes: apt repositories and the admin JSON API |

mod admin_token;
pub mod api;
mod auto_approve;
mod blobs;
pub mod catalog;
mod deb;
mod derive;
mod diff;
mod error;
pub mod fleet_view;
pub mod gc;
mod holds;
pub mod index;
mod keys;
pub mod manifest;
pub mod metrics;
mod moves;
mod plan;
mod promote;
mod publish;
mod registry;
pub mod replica_view;
mod rescue;
mod resign;
pub mod retention;
pub mod routes;
mod serve;
mod service;
pub mod signing;
pub mod snapshots;
mod sync;
pub mod table;
pub mod uploads;
pub mod verify;

pub use diff::{Change, Diff, DiffSummary};
pub use error::{ChannelsError, Result};
pub use moves::MoveOutcome;
pub use plan::MovePlan;
pub use promote::PromoteRequest;
pub use publish::RELEASE_DATE_MARGIN;
pub use serve::Served;
pub use service::{now, Actor, Channels};
pub use sync::SyncOutcome;
pub use uploads::{UploadOutcome, UploadTarget};
