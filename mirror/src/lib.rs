//! The pull-through mirror: upstream sources, verification, the content-addressed store and the
//! `/mirror/<source>/…` routes that plain apt talks to.

pub mod batch;
pub mod digest;
pub mod error;
pub mod flight;
pub mod keyring;
mod live;
pub mod metrics;
mod mirror;
pub mod origins;
pub mod packages;
pub mod passthrough;
pub mod path;
pub mod refs;
pub mod release;
pub mod release_health;
pub mod routes;
mod serve_blob;
pub mod store;
pub mod upstream;

pub use digest::Sha256;
pub use error::MirrorError;
pub use live::MirrorRoots;
pub use mirror::{Mirror, Resolved, SetupError};
pub use origins::Probe;
pub use routes::routes;
pub use store::{BlobInfo, Expected, Pending, Store, StoreError};
