//! The CLI's commands, one module per domain.

pub mod admin_client;
pub mod audit;
pub mod channels;
pub mod fleet;
pub mod hosts;
pub mod impact;
pub mod keys;
pub mod profiles;
pub mod replicas;
pub mod rollout;
pub mod serve;
pub mod snapshots;
pub mod store;
pub mod sync;
pub mod upload;
