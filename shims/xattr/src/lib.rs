//! Compatibility shim: async-tar 0.5 calls `xattr::set`; xattr 0.2.3 no longer compiles.
pub use real_xattr::set;
