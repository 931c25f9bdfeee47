//! Test support: signed fixture repositories, a request-counting upstream, the test app.

pub mod agent;
pub mod app;
pub mod apt;
pub mod channels;
pub mod db;
pub mod debs;
pub mod fixture;
pub mod fleet;
pub mod process;
pub mod proxy;
pub mod replicas;
pub mod signing;
pub mod upstream;
