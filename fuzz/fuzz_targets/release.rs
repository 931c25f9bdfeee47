//! A `Release` / `InRelease` / `Release.gpg` as upstream might serve it: parsing the Release
//! text, checking an InRelease's framing and reading detached signatures must never panic,
//! and no listed path may climb out of its suite.

#![no_main]

use aptgate_mirror::keyring::Keyring;
use aptgate_mirror::path::PoolPath;
use aptgate_mirror::release::SuiteRelease;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // No keys: every document is refused, after being parsed as far as it goes.
    let keyring = Keyring::load(&[], &[]).expect("an empty keyring loads");
    let _ = keyring.verify_detached(b"Origin: x\n", data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = keyring.verify_cleartext(text);
    if let Ok(release) = SuiteRelease::parse(text) {
        for path in release.files.keys() {
            assert!(PoolPath::parse(path).is_ok(), "{path:?}");
        }
        for rest in release.files.keys() {
            let _ = release.inflate_cap(rest, 1000);
        }
    }
});
