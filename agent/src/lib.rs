//! The host agent (`aptgate-agent`): enrolls the host, writes its aptgate apt source, reports
//! its inventory and runs the commands admins queue. [`protocol`] is the wire contract with the
//! server (`fleet/`), shared by both sides.

pub mod client;
pub mod commands;
pub mod config;
pub mod converge;
pub mod cycle;
pub mod facts;
pub mod files;
pub mod host_root;
pub mod inventory;
pub mod mirror_list;
pub mod other_sources;
pub mod profile;
pub mod protocol;
pub mod reboot;
pub mod sources;
pub mod state;
pub mod upgrade;
