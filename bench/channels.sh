#!/usr/bin/env bash
# Snapshots, publishing and promotion: aptgate vs aptly vs reprepro on the same synthetic
# upstream, loopback only. See bench/README.md ("channels.sh") for what is measured and how to
# read it. Run as root (installs aptly, reprepro, gnupg, time from Debian's packages).
#
#   sudo bench/channels.sh                  # N = 1000 10000 60000
#   sudo NS="1000 10000" bench/channels.sh  # smaller
#   sudo WRITE_README=0 bench/channels.sh   # print the report only
set -euo pipefail

NS=${NS:-"1000 10000 60000"}
# reprepro takes ~25 s per 1000 packages here; above this N it is skipped.
REPREPRO_MAX=${REPREPRO_MAX:-10000}
WRITE_README=${WRITE_README:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" != 0 ]; then
  echo "run as root: it installs aptly, reprepro, gnupg and time with apt-get" >&2
  exit 1
fi
need=()
for tool in aptly reprepro gpg curl python3; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq aptly reprepro gnupg time curl python3 >/dev/null
fi

echo "== building aptgate (release)" >&2
(cd "$ROOT" && cargo build --release -q -p aptgate -p aptgate-tests)
APTGATE="$ROOT/target/release/aptgate"
FIXTURE="$ROOT/target/release/aptgate-fixture"

WORK=$(mktemp -d /tmp/aptgate-bench-channels.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() {
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "nothing answers at $1" >&2
  return 1
}

RESULTS="$WORK/results.tsv" # N  tool  step  seconds  peak-RSS-KiB
: >"$RESULTS"

# measure N TOOL STEP CMD...: wall time and peak RSS of CMD.
measure() {
  local n=$1 tool=$2 step=$3
  shift 3
  if ! /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" >"$WORK/out" 2>&1; then
    echo "FAILED: $tool $step: $*" >&2
    tail -20 "$WORK/out" >&2
    exit 1
  fi
  read -r secs kib <"$WORK/time"
  printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$tool" "$step" "$secs" "$kib" >>"$RESULTS"
  printf '  %-9s %-44s %8.2f s  %7d MiB\n' "$tool" "$step" "$secs" $((kib / 1024)) >&2
}

# record N TOOL STEP SECONDS KIB: a figure measured another way.
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
  printf '  %-9s %-44s %8.2f s  %7d MiB\n' "$2" "$3" "$4" $(($5 / 1024)) >&2
}

vmhwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# A signing key for aptly and reprepro (aptgate makes its own), so all three sign.
export GNUPGHOME="$WORK/gnupg"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key "bench <bench@example.org>" ed25519 sign never 2>/dev/null
SIGN_KEY=$(gpg --batch --list-keys --with-colons | awk -F: '/^fpr/ {print $10; exit}')

start_aptgate() { # DIR PORT UPSTREAM KEY POLICY → pid
  local dir=$1 port=$2 upstream=$3 key=$4 policy=$5
  mkdir -p "$dir"
  cat >"$dir/aptgate.toml" <<EOF
data_dir = "$dir/data"
[server]
listen = "127.0.0.1:$port"
[sync]
interval = "0s"
[[sources]]
name = "fixture"
url = "$upstream"
suites = ["stable"]
components = ["main", "contrib"]
architectures = ["amd64", "arm64"]
keyring = ["$key"]
policy = "$policy"
[[channels]]
name = "testing"
follows = "fixture"
[[channels]]
name = "approved"
promotes_from = "testing"
EOF
  APTGATE_LOG=warn "$APTGATE" --config "$dir/aptgate.toml" serve >"$dir/serve.log" 2>&1 &
  echo $!
}

for N in $NS; do
  echo "== N = $N packages" >&2
  D="$WORK/$N"
  mkdir -p "$D"
  "$FIXTURE" generate "$D/repo" --packages "$N" --next-percent 5 --large-mib 1 --medium-kib 16 >"$D/generated.tsv"
  KEY="$D/repo/base/key.asc"
  ln -sfn "$D/repo/base" "$D/current"
  UPORT=$(free_port)
  "$FIXTURE" serve "$D/current" --port "$UPORT" >/dev/null 2>&1 &
  PIDS+=($!)
  UPSTREAM="http://127.0.0.1:$UPORT"
  wait_http "$UPSTREAM/dists/stable/InRelease"
  ONLY=$(for i in $(seq 0 20 180); do printf 'extra-%04d,' "$i"; done)
  ONLY=${ONLY%,}

  # --- aptgate, on_demand --------------------------------------------------------------
  PORT=$(free_port)
  PID=$(start_aptgate "$D/aptgate" "$PORT" "$UPSTREAM" "$KEY" on_demand)
  PIDS+=("$PID")
  wait_http "http://127.0.0.1:$PORT/healthz"
  A=("$APTGATE" --config "$D/aptgate/aptgate.toml")
  measure "$N" aptgate "sync + snapshot + publish (on_demand)" "${A[@]}" sync
  measure "$N" aptgate "first promotion (stores all .debs)" "${A[@]}" promote --from testing --to approved
  ln -sfn "$D/repo/next" "$D/current"
  measure "$N" aptgate "incremental sync + snapshot + publish" "${A[@]}" sync
  measure "$N" aptgate "selective promotion of 10 (renders .xz)" "${A[@]}" promote --from testing --to approved --only "$ONLY"
  measure "$N" aptgate "whole promotion (publish switch)" "${A[@]}" promote --from testing --to approved
  measure "$N" aptgate "rollback (switch back, all stored)" "${A[@]}" rollback approved
  measure "$N" aptgate "whole promotion again (all stored)" "${A[@]}" promote --from testing --to approved
  record "$N" aptgate "server peak RSS (on_demand run)" 0 "$(vmhwm "$PID")"
  kill "$PID"

  # --- aptgate, immediate ----------------------------------------------------------------
  ln -sfn "$D/repo/base" "$D/current"
  PORT=$(free_port)
  PID=$(start_aptgate "$D/aptgate-immediate" "$PORT" "$UPSTREAM" "$KEY" immediate)
  PIDS+=("$PID")
  wait_http "http://127.0.0.1:$PORT/healthz"
  measure "$N" aptgate "sync + snapshot + publish (immediate)" "$APTGATE" --config "$D/aptgate-immediate/aptgate.toml" sync
  record "$N" aptgate "server peak RSS (immediate run)" 0 "$(vmhwm "$PID")"
  kill "$PID"

  # --- aptly -----------------------------------------------------------------------------
  ln -sfn "$D/repo/base" "$D/current"
  mkdir -p "$D/aptly"
  echo "{\"rootDir\": \"$D/aptly\", \"gpgProvider\": \"gpg\", \"architectures\": [\"amd64\", \"arm64\"]}" >"$D/aptly.conf"
  gpg --batch --quiet --no-default-keyring --keyring "$D/trusted.gpg" --import "$KEY" 2>/dev/null
  AP=(aptly -config="$D/aptly.conf")
  "${AP[@]}" mirror create -keyring="$D/trusted.gpg" -architectures=amd64,arm64 fixture "$UPSTREAM/" stable main contrib >/dev/null
  measure "$N" aptly "mirror update" "${AP[@]}" mirror update -keyring="$D/trusted.gpg" fixture
  measure "$N" aptly "snapshot create" "${AP[@]}" snapshot create s1 from mirror fixture
  measure "$N" aptly "publish snapshot" "${AP[@]}" publish snapshot -batch -passphrase= -gpg-key="$SIGN_KEY" -distribution=stable s1
  ln -sfn "$D/repo/next" "$D/current"
  measure "$N" aptly "mirror update (next)" "${AP[@]}" mirror update -keyring="$D/trusted.gpg" fixture
  measure "$N" aptly "snapshot create (next)" "${AP[@]}" snapshot create s2 from mirror fixture
  measure "$N" aptly "publish switch" "${AP[@]}" publish switch -batch -passphrase= -gpg-key="$SIGN_KEY" stable s2
  # shellcheck disable=SC2086
  measure "$N" aptly "snapshot pull of 10" "${AP[@]}" snapshot pull -no-deps=false s1 s2 s3 ${ONLY//,/ }
  measure "$N" aptly "publish switch (pulled)" "${AP[@]}" publish switch -batch -passphrase= -gpg-key="$SIGN_KEY" stable s3

  # --- reprepro --------------------------------------------------------------------------
  if [ "$N" -le "$REPREPRO_MAX" ]; then
  ln -sfn "$D/repo/base" "$D/current"
  R="$D/reprepro"
  mkdir -p "$R/conf"
  cat >"$R/conf/distributions" <<EOF
Codename: stable
Architectures: amd64 arm64
Components: main contrib
Update: fixture
SignWith: $SIGN_KEY
EOF
  cat >"$R/conf/updates" <<EOF
Name: fixture
Method: $UPSTREAM/
Suite: stable
Components: main contrib
Architectures: amd64 arm64
VerifyRelease: blindtrust
EOF
  measure "$N" reprepro "update (download + export)" reprepro -b "$R" --noskipold update
  ln -sfn "$D/repo/next" "$D/current"
  measure "$N" reprepro "update (next)" reprepro -b "$R" --noskipold update
  fi

  rm -rf "$D/aptly" "$D/reprepro" "$D/aptgate" "$D/aptgate-immediate"
done

# --- report --------------------------------------------------------------------------------
REPORT="$WORK/report.md"
python3 - "$RESULTS" "$NS" >"$REPORT" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
ns = sys.argv[2].split()
t = collections.defaultdict(dict)
for n, tool, step, secs, kib in rows:
    t[n][(tool, step)] = (float(secs), int(kib))
def s(n, tool, step):
    return t[n].get((tool, step), (float("nan"), 0))[0]
def rss(n, tool, step):
    return t[n].get((tool, step), (0, 0))[1] / 1024
out = []
out.append("| step | " + " | ".join(f"N = {n}" for n in ns) + " |")
out.append("|---|" + "---:|" * len(ns))
for n0 in ns[:1]:
    steps = [k for k in t[n0]]
for tool, step in steps:
    cells = []
    for n in ns:
        if (tool, step) not in t[n]:
            cells.append("skipped")
            continue
        secs, kib = t[n][(tool, step)]
        cells.append(f"{kib/1024:.0f} MiB" if "peak RSS" in step else f"{secs:.2f} s ({kib/1024:.0f} MiB)")
    out.append(f"| {tool}: {step} | " + " | ".join(cells) + " |")
print("Time (wall) and peak RSS of the command; for aptgate the CLI is a thin client, so the")
print("server's peak RSS is the `server peak RSS` rows.\n")
print("\n".join(out))
print()
print("Ratios (aptly or reprepro time / aptgate time; higher is better for aptgate):\n")
print("| comparison | target | " + " | ".join(f"N = {n}" for n in ns) + " |")
print("|---|---|" + "---:|" * len(ns))
def ratio(num, den):
    return "—" if den != den or num != num or den == 0 else f"{num/den:.1f}×"
comps = [
    ("aptly update+snapshot+publish / aptgate immediate sync", "≥ 3×",
     lambda n: (s(n,"aptly","mirror update")+s(n,"aptly","snapshot create")+s(n,"aptly","publish snapshot"), s(n,"aptgate","sync + snapshot + publish (immediate)"))),
    ("aptly update+snapshot+publish / aptgate on_demand sync", "≥ 20×",
     lambda n: (s(n,"aptly","mirror update")+s(n,"aptly","snapshot create")+s(n,"aptly","publish snapshot"), s(n,"aptgate","sync + snapshot + publish (on_demand)"))),
    ("aptly incremental (update+snapshot+switch) / aptgate incremental sync", "≥ 5×",
     lambda n: (s(n,"aptly","mirror update (next)")+s(n,"aptly","snapshot create (next)")+s(n,"aptly","publish switch"), s(n,"aptgate","incremental sync + snapshot + publish"))),
    ("aptly publish switch / aptgate whole promotion again (all stored)", "≥ 50×",
     lambda n: (s(n,"aptly","publish switch"), s(n,"aptgate","whole promotion again (all stored)"))),
    ("aptly publish switch / aptgate whole promotion (fetching the 5 %)", "—",
     lambda n: (s(n,"aptly","publish switch"), s(n,"aptgate","whole promotion (publish switch)"))),
    ("aptly pull+switch / aptgate selective promotion of 10", "≥ 3×",
     lambda n: (s(n,"aptly","snapshot pull of 10")+s(n,"aptly","publish switch (pulled)"), s(n,"aptgate","selective promotion of 10 (renders .xz)"))),
    ("reprepro update / aptgate immediate sync", "—",
     lambda n: (s(n,"reprepro","update (download + export)"), s(n,"aptgate","sync + snapshot + publish (immediate)"))),
    ("reprepro update (next) / aptgate incremental sync", "—",
     lambda n: (s(n,"reprepro","update (next)"), s(n,"aptgate","incremental sync + snapshot + publish"))),
]
for name, target, f in comps:
    print(f"| {name} | {target} | " + " | ".join(ratio(*f(n)) for n in ns) + " |")
print()
peak = max([rss(n,"aptgate","server peak RSS (on_demand run)") for n in ns] + [rss(n,"aptgate","server peak RSS (immediate run)") for n in ns])
aptly_peak = max(t[n].get((tool, step), (0,0))[1]/1024 for n in ns for (tool, step) in t[n] if tool == "aptly")
print(f"aptgate server peak RSS over all runs: {peak:.0f} MiB (target < 200 MB); aptly's largest step: {aptly_peak:.0f} MiB.")
PY

{
  echo "Run: \`sudo NS=\"$NS\" bench/channels.sh\` on $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores, aptgate $(cd "$ROOT" && git describe --always --dirty), $(aptly version | head -1), reprepro $(reprepro --version 2>&1 | head -1 | awk '{print $NF}')."
  echo
  cat "$REPORT"
} >"$WORK/full.md"
cat "$WORK/full.md"

if [ "$WRITE_README" = 1 ]; then
  python3 - "$ROOT/bench/README.md" "$WORK/full.md" <<'PY'
import sys
path, report = sys.argv[1], open(sys.argv[2]).read()
text = open(path).read()
start, end = "<!-- CHANNELS-RESULTS -->", "<!-- /CHANNELS-RESULTS -->"
before, rest = text.split(start, 1)
_, after = rest.split(end, 1)
open(path, "w").write(before + start + "\n" + report + end + after)
PY
  echo "== results written to bench/README.md" >&2
fi
