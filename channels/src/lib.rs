//! Snapshots, channels and publishing.
//!
//! This crate will own immutable snapshots of upstream state (membership held as
//! content-addressed index files), channels that point at snapshots (`testing`, `approved`,
//! `site-…`), promotion between them with holds, rollback and an audit trail, and the
//! signed apt repositories each channel is published as under `/channels/<channel>/`.
//! Nothing is implemented yet: see issue "Snapshots, staged channels, promotion and signed
//! publishing".
