#!/usr/bin/env bash
# Fuzzes the parsers that read upstream data — the `Packages` pool scanner with its capped
# decompression, and Release / InRelease / Release.gpg — with cargo fuzz (libFuzzer).
# Not part of CI: run it by hand, for as long as you like.
#
#   bench/fuzz.sh                  # 60 s per target
#   bench/fuzz.sh 600              # 10 minutes per target
#   bench/fuzz.sh 30 release       # one target
#
# Crashes land in fuzz/artifacts/<target>/; replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(packages_index release)
fi

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
# cargo fuzz passes nightly-only flags (-Zsanitizer=address); the machine has one stable
# toolchain, which accepts them when told it is bootstrapping itself.
export RUSTC_BOOTSTRAP=1

for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    echo "== $target: ${seconds}s" >&2
    # Inputs up to 1 MiB (indices are larger, but the scanner is line by line); 2 GiB of
    # memory at most, so a decompression that escaped its cap shows as a crash.
    cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -max_len=1048576 -rss_limit_mb=2048
done
