//! A `Packages` index (plain or compressed) as upstream might sign it: the mirror's pool
//! scanner and the capped decompression must never panic, and whatever is indexed must be a
//! clean path inside the repository.

#![no_main]

use aptgate_mirror::packages;
use aptgate_mirror::path::PoolPath;
use libfuzzer_sys::fuzz_target;

const CAP: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let scan = packages::pool_entries(data);
    for (path, _) in &scan.entries {
        assert!(PoolPath::parse(path.as_str()).is_ok());
        assert!(!path.as_str().split('/').any(|s| s.is_empty() || s == ".."));
    }
    for name in ["Packages.gz", "Packages.xz"] {
        if let Ok(plain) = packages::decompress(name, data, CAP) {
            assert!(plain.len() as u64 <= CAP);
            packages::pool_entries(&plain);
        }
    }
});
