//! The channel signing keys, checked with the real `gpgv` (what apt runs).

use aptgate_channels::signing::{KeyStore, SigningKey};
use std::path::Path;
use std::process::Command;

/// gpgv wants a binary keyring: dearmor the public key with gpg.
fn keyring(dir: &Path, name: &str, armored: &str) -> std::path::PathBuf {
    let asc = dir.join(format!("{name}.asc"));
    let gpg = dir.join(format!("{name}.gpg"));
    fs_err::write(&asc, armored).unwrap();
    let status = Command::new("gpg")
        .args(["--batch", "--yes", "--dearmor", "-o"])
        .arg(&gpg)
        .arg(&asc)
        .status()
        .unwrap();
    assert!(status.success());
    gpg
}

/// Verifies as apt does: at least one good signature and no bad one. (gpgv's exit status
/// alone fails a file that also carries a signature by a key the keyring lacks, which apt
/// accepts: Debian's own InRelease is signed by several keys.)
fn gpgv(keyring: &Path, files: &[&Path]) -> bool {
    let out = Command::new("gpgv")
        .args(["--status-fd", "1", "--keyring"])
        .arg(keyring)
        .args(files)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    status.contains("[GNUPG:] GOODSIG") && !status.contains("[GNUPG:] BADSIG")
}

const RELEASE: &str = "Origin: aptgate\nLabel: approved\nSuite: stable\nSHA256:\n \
    ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad 3 main/binary-amd64/Packages\n";

#[test]
fn a_rotation_signs_with_both_keys_and_each_host_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let (mut store, generated) = KeyStore::load_or_generate(&keys_dir, "test key").unwrap();
    let old = generated.expect("first start generates a key");
    let old_public = store.public_keys_armored().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let secret = keys_dir.join(format!("{old}.secret.asc"));
    assert_eq!(
        fs_err::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Reopening loads the same key, and generates nothing.
    let (reopened, again) = KeyStore::load_or_generate(&keys_dir, "test key").unwrap();
    assert_eq!(again, None);
    assert_eq!(reopened.list()[0].fingerprint, old);

    let old_ring = keyring(dir.path(), "old", &old_public);
    let in_release = dir.path().join("InRelease");
    fs_err::write(&in_release, store.cleartext_sign(RELEASE).unwrap()).unwrap();
    assert!(gpgv(&old_ring, &[&in_release]));
    let tampered = dir.path().join("InRelease.bad");
    fs_err::write(
        &tampered,
        fs_err::read_to_string(&in_release)
            .unwrap()
            .replace("approved", "approveD"),
    )
    .unwrap();
    assert!(
        !gpgv(&old_ring, &[&tampered]),
        "a changed text must not verify"
    );

    // Rotation: a second key; both sign while both are active.
    let new_key = SigningKey::generate("test key 2").unwrap();
    let new = new_key.fingerprint();
    let new_ring = keyring(dir.path(), "new", &new_key.armored_public_key().unwrap());
    store.add(new_key).unwrap();
    let release = dir.path().join("Release");
    let release_gpg = dir.path().join("Release.gpg");
    fs_err::write(&release, RELEASE).unwrap();
    fs_err::write(
        &release_gpg,
        store.detached_sign(RELEASE.as_bytes()).unwrap(),
    )
    .unwrap();
    fs_err::write(&in_release, store.cleartext_sign(RELEASE).unwrap()).unwrap();
    for ring in [&old_ring, &new_ring] {
        assert!(
            gpgv(ring, &[&in_release]),
            "InRelease with {}",
            ring.display()
        );
        assert!(
            gpgv(ring, &[&release_gpg, &release]),
            "Release.gpg with {}",
            ring.display()
        );
    }
    // Both public keys are published in one .asc.
    let both = keyring(dir.path(), "both", &store.public_keys_armored().unwrap());
    assert!(gpgv(&both, &[&in_release]));

    // Retiring the old key: only the new one signs; the last key cannot be retired.
    store.retire(&old).unwrap();
    fs_err::write(&in_release, store.cleartext_sign(RELEASE).unwrap()).unwrap();
    assert!(gpgv(&new_ring, &[&in_release]));
    assert!(!gpgv(&old_ring, &[&in_release]));
    assert!(store.retire(&new).is_err());
    let (reopened, _) = KeyStore::load_or_generate(&keys_dir, "test key").unwrap();
    let active: Vec<_> = reopened
        .list()
        .into_iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| k.fingerprint)
        .collect();
    assert_eq!(active, [new]);
}
