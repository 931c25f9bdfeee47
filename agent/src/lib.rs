//! The host agent (`aptgate-agent`): enrolls the host, writes its aptgate apt source, reports
//! its inventory and runs the commands admins queue. [`protocol`] is the wire contract with the
//! server (`fleet/`), shared by both sides.

pub mod protocol;
