//! The admin API's bearer token: created on first start in `<data_dir>/admin-token`, mode 0600,
//! printed once.

use std::path::{Path as FsPath, PathBuf};

/// The file holding the admin token, in the data directory.
pub const TOKEN_FILE: &str = "admin-token";

/// Reads the admin token, creating it (random, 0600) on first start. Returns the token and
/// whether it was just created.
pub fn load_or_create_token(data_dir: &FsPath) -> std::io::Result<(String, bool)> {
    let path = data_dir.join(TOKEN_FILE);
    match fs_err::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok((token.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    crate::signing::write_private(&path, format!("{token}\n").as_bytes())
        .map_err(std::io::Error::other)?;
    Ok((token, true))
}

pub fn token_path(data_dir: &FsPath) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}
