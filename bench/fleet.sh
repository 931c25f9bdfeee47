#!/usr/bin/env bash
# The fleet server under simulated agents: enrollment, inventory uploads, check-ins at a fixed
# rate, the fleet pending queue and long-poll waits, on SQLite and on PostgreSQL. The agents
# are `aptgate-fleet-load` (tests/src/bin/aptgate-fleet-load.rs), which speaks the agent
# protocol; the server is the release build with a synthetic upstream of 1500 packages, a
# `testing` channel that follows it and an `approved` channel one step behind, so every host
# has updates awaiting approval. Prints a markdown table and writes it into bench/README.md
# between the FLEET markers.
#
#   bench/fleet.sh                              # 10,000 hosts, both backends
#   HOSTS=2000 BACKENDS=sqlite bench/fleet.sh   # smaller
#
# Knobs: HOSTS (10000), RATE (check-ins/s, 200), CHECKIN_SECONDS (30), WAITERS (= HOSTS),
# BACKENDS ("sqlite postgres"), PG_URL (postgres://postgres@127.0.0.1:5432),
# WRITE_README (1), BUILD (1; 0 uses the binaries as they are), APTGATE (the server binary, to
# compare builds).
set -euo pipefail

HOSTS=${HOSTS:-10000}
RATE=${RATE:-200}
CHECKIN_SECONDS=${CHECKIN_SECONDS:-30}
WAITERS=${WAITERS:-$HOSTS}
BACKENDS=${BACKENDS:-"sqlite postgres"}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
WRITE_README=${WRITE_README:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [ "${BUILD:-1}" = 1 ]; then
  echo "== building aptgate and the load generator (release)" >&2
  (cd "$ROOT" && cargo build --release -q -p aptgate -p aptgate-tests)
fi
APTGATE=${APTGATE:-"$ROOT/target/release/aptgate"}
FIXTURE="$ROOT/target/release/aptgate-fixture"
LOAD="$ROOT/target/release/aptgate-fleet-load"

WORK=$(mktemp -d /tmp/aptgate-bench-fleet.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# free_port, wait_http, start_nginx
. "$ROOT/bench/lib.sh"

# One simulated host holds a connection per wait: the load generator needs a file descriptor
# for each, and so does the server. Raise the soft limit as far as the hard one allows (a
# container may cap it below 65536 and withhold CAP_SYS_RESOURCE, even from root).
want=$((WAITERS + 1024))
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then
  ulimit -n 65536
else
  ulimit -n "$hard"
fi
if [ "$(ulimit -n)" -lt "$want" ]; then
  echo "open-file limit $(ulimit -n) is below the $want that $WAITERS waits need" >&2
  exit 1
fi

echo "== synthetic upstream: 1500 small packages (750 amd64), 10 % at a new version in next/" >&2
"$FIXTURE" generate "$WORK/repo" --packages 1500 --next-percent 10 --large-mib 1 --medium-kib 64 \
  >"$WORK/generated.tsv"
KEY=$(awk -F'\t' '$1 == "key" {print $2}' "$WORK/generated.tsv")
# Installed on every simulated (amd64) host: the small amd64 packages at their first version
# (1.0-1; the list printed is the next state's, where the bumped ones are at 1.0-2).
grep -P '^extra-\d+\t' "$WORK/generated.tsv" |
  awk -F'\t' '$3 == "amd64" && !seen[$1]++ {print $1 "\t1.0-1\t" $3}' \
  >"$WORK/installed.tsv"
ln -sfn "$WORK/repo/base" "$WORK/upstream"
UP_PORT=$(free_port)
"$FIXTURE" serve "$WORK/upstream" --port "$UP_PORT" >/dev/null 2>&1 &
PIDS+=($!)
UPSTREAM="http://127.0.0.1:$UP_PORT"
wait_http "$UPSTREAM/dists/stable/InRelease"

RESULTS="$WORK/results.tsv" # backend  key  value
: >"$RESULTS"

for backend in $BACKENDS; do
  echo "== $backend" >&2
  ln -sfn "$WORK/repo/base" "$WORK/upstream"
  dir="$WORK/$backend"
  mkdir -p "$dir"
  port=$(free_port)
  db=""
  if [ "$backend" = postgres ]; then
    name="aptgate_bench_fleet_$$"
    psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name"
    db="[database]
url = \"$PG_URL/$name\""
  fi
  cat >"$dir/aptgate.toml" <<EOF
data_dir = "$dir/data"
$db
[server]
listen = "127.0.0.1:$port"
[sync]
interval = "0s"
[[sources]]
name = "fixture"
url = "$UPSTREAM"
suites = ["stable"]
components = ["main", "contrib"]
architectures = ["amd64", "arm64"]
keyring = ["$KEY"]
[[channels]]
name = "testing"
follows = "fixture"
[[channels]]
name = "approved"
promotes_from = "testing"
[fleet]
wait = "300s"
[[fleet.rules]]
name = "everyone"
selector = ""
channel = "approved"
EOF
  APTGATE_LOG=warn "$APTGATE" --config "$dir/aptgate.toml" serve >"$dir/serve.log" 2>&1 &
  server=$!
  PIDS+=("$server")
  wait_http "http://127.0.0.1:$port/healthz"
  ag() { "$APTGATE" --config "$dir/aptgate.toml" "$@" >/dev/null; }
  ag sync
  ag promote --from testing --to approved --comment bench
  ln -sfn "$WORK/repo/next" "$WORK/upstream"
  ag sync

  "$LOAD" --server "http://127.0.0.1:$port" --admin-token "$(cat "$dir/data/admin-token")" \
    --server-pid "$server" --hosts "$HOSTS" --packages "$WORK/installed.tsv" \
    --rate "$RATE" --seconds "$CHECKIN_SECONDS" --waiters "$WAITERS" | tee "$dir/load.out" |
    while read -r key value; do printf '%s\t%s\t%s\n' "$backend" "$key" "$value"; done >>"$RESULTS"
  kill "$server"
  wait "$server" 2>/dev/null || true
  if [ "$backend" = postgres ]; then
    psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $name" || true
  fi
done

value() { awk -F'\t' -v b="$1" -v k="$2" '$1 == b && $2 == k {print $3}' "$RESULTS"; }
row() { # label key target
  local line="| $1 |"
  for backend in $BACKENDS; do line="$line $(value "$backend" "$2") |"; done
  echo "$line $3 |"
}
{
  header="| measure |"
  sep="|---|"
  for backend in $BACKENDS; do header="$header $backend |"; sep="$sep---:|"; done
  echo "$header target |"
  echo "$sep---|"
  row "enrollments / s" enroll_per_sec ""
  row "inventory uploads / s (750 packages)" inventory_uploads_per_sec ""
  row "bytes per inventory upload (gzip)" inventory_bytes_per_upload ""
  row "unchanged inventory asked again (of 100 check-ins)" unchanged_inventory_asked_again_of_100 "0"
  row "check-in p50, ms, at $RATE/s" checkin_p50_ms ""
  row "check-in p99, ms, at $RATE/s" checkin_p99_ms "≤ 20"
  row "check-in max, ms" checkin_max_ms ""
  row "server CPU per check-in, ms" server_cpu_ms_per_checkin ""
  row "fleet pending queue, first, ms" pending_queue_ms_first "≤ 1000"
  row "fleet pending queue, median of 3, ms" pending_queue_ms_median "≤ 1000"
  row "pending queue: hosts" pending_queue_hosts ""
  row "pending queue: awaiting groups" pending_queue_rows ""
  row "server RSS before the waits, MiB" server_rss_mib_before_waits ""
  row "server RSS with $WAITERS waits held, MiB" server_rss_mib_with_waits "≤ 300"
  row "RSS rise per held wait, KiB" server_kib_per_wait ""
  row "waits the server holds a socket for" waits_connected "$WAITERS"
  row "waits answered early" waits_answered_early "0"
  echo
  echo "Run: \`bench/fleet.sh\` (HOSTS=$HOSTS RATE=$RATE CHECKIN_SECONDS=$CHECKIN_SECONDS WAITERS=$WAITERS) on $(date -u '+%F %H:%M') UTC, aptgate $(git -C "$ROOT" rev-parse --short HEAD): $HOSTS simulated hosts, $(wc -l <"$WORK/installed.tsv") packages each, $(nproc) cores shared by the server, the load generator and PostgreSQL (1-minute load average at the end: $(cut -d' ' -f1 /proc/loadavg))."
} >"$WORK/table.md"
cat "$WORK/table.md"

if [ "$WRITE_README" = 1 ]; then
  python3 - "$ROOT/bench/README.md" "$WORK/table.md" <<'PY'
import sys
readme, table = sys.argv[1], open(sys.argv[2]).read()
text = open(readme).read()
start, end = "<!-- FLEET RESULTS START -->", "<!-- FLEET RESULTS END -->"
block = f"{start}\n{table}{end}"
if start in text:
    head, rest = text.split(start, 1)
    text = head + block + rest.split(end, 1)[1]
else:
    text = text.rstrip("\n") + "\n\n## fleet.sh\n\n" + block + "\n"
open(readme, "w").write(text)
PY
fi
