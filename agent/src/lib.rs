//! The host agent.
//!
//! This crate will own the agent that runs on each apt host: enrolment with labels, writing the
//! `sources.list.d` entry (with `Signed-By`) for the channel its labels map to, reporting
//! installed and pending packages, and applying upgrades inside a window while holding a
//! per-group lock. Nothing is implemented yet.
