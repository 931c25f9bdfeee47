#!/usr/bin/env bash
# Replica sync: an aptgate replica following a canonical aptgate server, side by side with
# `rsync` of an aptly `public/` tree (what aptly users do for a branch office today), on the
# same synthetic upstream, loopback only. See bench/README.md ("replicas.sh") for what is
# measured and how to read it. Run as root (installs aptly, rsync, gnupg, nginx-light, time).
#
#   sudo bench/replicas.sh                   # N = 60000
#   sudo NS="10000 60000" bench/replicas.sh  # several sizes
#   sudo WRITE_README=0 bench/replicas.sh    # print the report only
set -euo pipefail

NS=${NS:-60000}
WRITE_README=${WRITE_README:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"

if [ "$(id -u)" != 0 ]; then
  echo "run as root: it installs aptly, rsync, nginx-light, gnupg and time with apt-get" >&2
  exit 1
fi
need=()
for pkg in aptly:aptly rsync:rsync gpg:gnupg curl:curl python3:python3 nginx:nginx-light \
  /usr/bin/time:time bc:bc; do
  command -v "${pkg%%:*}" >/dev/null || need+=("${pkg#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== building aptgate (release)" >&2
(cd "$ROOT" && cargo build --release -q -p aptgate -p aptgate-tests)
APTGATE="$ROOT/target/release/aptgate"
FIXTURE="$ROOT/target/release/aptgate-fixture"
PROBE=(python3 "$BENCH/replica_probe.py")

WORK=$(mktemp -d /tmp/aptgate-bench-replicas.XXXXXX)
chmod 755 "$WORK" # nginx's workers (user nobody) read the upstream from here
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "== kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

# free_port, wait_http, start_nginx
. "$ROOT/bench/lib.sh"

RESULTS="$WORK/results.tsv" # N  key  value
: >"$RESULTS"
put() { printf '%s\t%s\t%s\n' "$@" >>"$RESULTS"; echo "  $2: $3" >&2; }
now() { date +%s.%N; }
minus() { echo "$1 - $2" | bc; }

# A signing key for aptly's publications.
export GNUPGHOME="$WORK/gnupg"
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key "bench <bench@example.org>" ed25519 sign never 2>/dev/null
SIGN_KEY=$(gpg --batch --list-keys --with-colons | awk -F: '/^fpr/ {print $10; exit}')

# The synthetic upstream, served by nginx from DIR (a symlink the script flips base → next).
start_upstream() { # DIR → sets UPSTREAM
  local dir=$1 port
  port=$(free_port)
  start_nginx "$dir" "$port"
  UPSTREAM_PID=$NGINX_PID
  UPSTREAM="http://127.0.0.1:$port"
  wait_http "$UPSTREAM/dists/stable/InRelease"
}

# The canonical server: `immediate`, so every .deb is stored there and a replica's downloads
# never wait for the upstream.
start_canonical() { # DIR PORT UPSTREAM KEY → pid
  local dir=$1 port=$2 upstream=$3 key=$4
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
policy = "immediate"
[[channels]]
name = "testing"
follows = "fixture"
[[channels]]
name = "approved"
promotes_from = "testing"
[retention]
gc_interval = "0s"
EOF
  APTGATE_LOG=warn "$APTGATE" --config "$dir/aptgate.toml" serve >"$dir/serve.log" 2>&1 &
  echo $!
}

# A counting TCP proxy in front of the canonical server: every byte a replica exchanges with
# its parent crosses it.
start_proxy() { # TARGET_PORT → sets PROXY_PORT, CTL_PORT
  PROXY_PORT=$(free_port)
  CTL_PORT=$(free_port)
  python3 "$BENCH/count_proxy.py" "$PROXY_PORT" "$1" "$CTL_PORT" &
  PIDS+=("$!")
  for _ in $(seq 1 100); do
    proxy_bytes "$CTL_PORT" get >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "the counting proxy did not start" >&2
  return 1
}
# proxy_bytes CTL get|reset → "UP DOWN CONNECTIONS"
proxy_bytes() {
  python3 -c 'import socket,sys; s=socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.sendall((sys.argv[2]+"\n").encode()); print(s.makefile().readline().strip())' "$1" "$2"
}
wire() { local b; b=$(proxy_bytes "$1" get); echo "$b" | awk '{print $1 + $2}'; }

# A replica of the canonical server through a proxy, carrying `approved`. POLICY: on_demand or
# immediate. Its data dir and config are prepared; start_replica runs it.
prepare_replica() { # DIR PORT PARENT_URL FINGERPRINT TOKEN NAME POLICY
  local dir=$1 port=$2 parent=$3 fpr=$4 token=$5 name=$6 policy=$7 extra=()
  mkdir -p "$dir"
  printf 'data_dir = "%s/data"\n[server]\nlisten = "127.0.0.1:%s"\n' "$dir" "$port" >"$dir/aptgate.toml"
  [ "$policy" = immediate ] && extra=(--immediate approved)
  "$APTGATE" --config "$dir/aptgate.toml" replica init --parent "$parent" --fingerprint "$fpr" \
    --token "$token" --name "$name" --channel approved "${extra[@]}" 2>/dev/null
}
start_replica() { # DIR → pid
  APTGATE_LOG=${REPLICA_LOG:-warn} "$APTGATE" --config "$1/aptgate.toml" serve >"$1/serve.log" 2>&1 &
  echo $!
}

for N in $NS; do
  echo "== N = $N packages" >&2
  D="$WORK/$N"
  mkdir -p "$D"
  t0=$(now)
  "$FIXTURE" generate "$D/repo" --packages "$N" --next-percent 5 --large-mib 1 --medium-kib 16 >/dev/null
  put "$N" "generate base + next (s)" "$(minus "$(now)" "$t0")"
  KEY="$D/repo/base/key.asc"
  ln -sfn "$D/repo/base" "$D/current"
  start_upstream "$D/current"

  # --- the canonical server: sync, first promotion ----------------------------------------
  CPORT=$(free_port)
  CPID=$(start_canonical "$D/canonical" "$CPORT" "$UPSTREAM" "$KEY")
  PIDS+=("$CPID")
  CANON="http://127.0.0.1:$CPORT"
  wait_http "$CANON/healthz"
  C=("$APTGATE" --config "$D/canonical/aptgate.toml")
  t0=$(now)
  "${C[@]}" sync >"$D/out" 2>&1
  "${C[@]}" promote --from testing --to approved >>"$D/out" 2>&1
  put "$N" "canonical: sync (immediate) + promotion (s)" "$(minus "$(now)" "$t0")"
  FPR=$("${C[@]}" key list | awk 'NR == 2 {print $1}')
  PROBE_TOKEN=$("${C[@]}" replica token create bench-probe 2>/dev/null)
  SEQ1=$("${PROBE[@]}" seq "$CANON" "$PROBE_TOKEN")
  "${PROBE[@]}" content "$CANON" approved "$D/content-base.json"
  echo '{"release": {}, "indices": {}, "debs": {}}' >"$D/content-empty.json"
  read -r IDXALL1 IDX1 DEBS1 < <("${PROBE[@]}" new "$D/content-empty.json" "$D/content-base.json")
  put "$N" "content: Release files + indices of approved, every form (bytes)" "$IDXALL1"
  put "$N" "content: Release files + indices of approved, smallest form (bytes)" "$IDX1"
  put "$N" "content: .debs of approved (bytes)" "$DEBS1"

  # --- (a) first full sync of a replica, on_demand and immediate --------------------------
  declare -A RPID RURL RCTL
  for policy in on_demand immediate; do
    start_proxy "$CPORT"
    RCTL[$policy]=$CTL_PORT
    token=$("${C[@]}" replica token create "bench-$policy" 2>/dev/null)
    rport=$(free_port)
    prepare_replica "$D/replica-$policy" "$rport" "http://127.0.0.1:$PROXY_PORT" "$FPR" "$token" \
      "bench-$policy" "$policy"
    RURL[$policy]="http://127.0.0.1:$rport"
    proxy_bytes "$CTL_PORT" reset >/dev/null
    t0=$(now)
    RPID[$policy]=$(start_replica "$D/replica-$policy")
    PIDS+=("${RPID[$policy]}")
    t1=$("${PROBE[@]}" wait "${RURL[$policy]}" "$SEQ1")
    put "$N" "aptgate $policy: first full sync (s)" "$(minus "$t1" "$t0")"
    put "$N" "aptgate $policy: first full sync (bytes)" "$(wire "$CTL_PORT")"
  done
  [ "$("${PROBE[@]}" versions "${RURL[on_demand]}" approved)" = 0 ] # sanity: the base state

  # --- (b) a 5 % upstream change, synced and promoted on the canonical --------------------
  # Both replicas are paused (SIGSTOP) while the canonical syncs and promotes, then resumed one
  # at a time: each one's time is from its resumption to serving the new seq, alone on the CPU.
  for policy in on_demand immediate; do
    kill -STOP "${RPID[$policy]}"
    proxy_bytes "${RCTL[$policy]}" reset >/dev/null
  done
  ln -sfn "$D/repo/next" "$D/current"
  t0=$(now)
  "${C[@]}" sync >"$D/out" 2>&1
  "${C[@]}" promote --from testing --to approved >>"$D/out" 2>&1
  put "$N" "canonical: incremental sync + promotion (s)" "$(minus "$(now)" "$t0")"
  SEQ2=$("${PROBE[@]}" seq "$CANON" "$PROBE_TOKEN")
  # The replica is done when it serves the canonical's new InRelease (not only a seq >= SEQ2).
  IN_RELEASE2=$(curl -sf "$CANON/channels/approved/dists/stable/InRelease" | sha256sum | cut -d' ' -f1)
  "${PROBE[@]}" content "$CANON" approved "$D/content-next.json"
  read -r IDXALL2 IDX2 DEBS2 < <("${PROBE[@]}" new "$D/content-base.json" "$D/content-next.json")
  put "$N" "change: Release files + new indices of approved, every form (bytes)" "$IDXALL2"
  put "$N" "change: Release files + new indices of approved, smallest form (bytes)" "$IDX2"
  put "$N" "change: new .debs of approved (bytes)" "$DEBS2"
  BUMPED=$("${PROBE[@]}" versions "$CANON" approved)
  put "$N" "change: packages at the new version in approved (canonical)" "$BUMPED"
  for policy in on_demand immediate; do
    t0=$(now)
    kill -CONT "${RPID[$policy]}"
    t1=$("${PROBE[@]}" wait "${RURL[$policy]}" "$SEQ2" "$IN_RELEASE2")
    put "$N" "aptgate $policy: incremental sync (s)" "$(minus "$t1" "$t0")"
    put "$N" "aptgate $policy: incremental sync (bytes)" "$(wire "${RCTL[$policy]}")"
    put "$N" "aptgate $policy: packages at the new version served" \
      "$("${PROBE[@]}" versions "${RURL[$policy]}" approved)"
    curl -s "${RURL[$policy]}/status" >"$D/replica-$policy/status-after.json"
    echo "seq2=$SEQ2" >>"$D/replica-$policy/status-after.json"
  done
  for policy in on_demand immediate; do kill "${RPID[$policy]}"; done
  kill "$CPID"

  # --- (c) aptly publishes the same upstream; rsync copies its public/ tree ----------------
  ln -sfn "$D/repo/base" "$D/current"
  mkdir -p "$D/aptly" "$D/copy"
  echo "{\"rootDir\": \"$D/aptly\", \"gpgProvider\": \"gpg\", \"architectures\": [\"amd64\", \"arm64\"]}" >"$D/aptly.conf"
  gpg --batch --quiet --no-default-keyring --keyring "$D/trusted.gpg" --import "$KEY" 2>/dev/null
  AP=(aptly -config="$D/aptly.conf")
  "${AP[@]}" mirror create -keyring="$D/trusted.gpg" -architectures=amd64,arm64 fixture "$UPSTREAM/" stable main contrib >/dev/null
  t0=$(now)
  "${AP[@]}" mirror update -keyring="$D/trusted.gpg" fixture >"$D/out" 2>&1
  "${AP[@]}" snapshot create s1 from mirror fixture >>"$D/out" 2>&1
  "${AP[@]}" publish snapshot -batch -passphrase= -gpg-key="$SIGN_KEY" -distribution=stable s1 >>"$D/out" 2>&1
  put "$N" "aptly: mirror update + snapshot + publish (s)" "$(minus "$(now)" "$t0")"
  RPORT=$(free_port)
  cat >"$WORK/rsyncd.conf" <<EOF
pid file = $WORK/rsyncd.pid
use chroot = no
uid = root
gid = root
[public]
path = $D/aptly/public
read only = yes
EOF
  rsync --daemon --no-detach --address=127.0.0.1 --port="$RPORT" --config="$WORK/rsyncd.conf" &
  RSYNCD=$!
  PIDS+=("$RSYNCD")
  for _ in $(seq 1 100); do rsync "rsync://127.0.0.1:$RPORT/" >/dev/null 2>&1 && break; sleep 0.05; done
  # rsync_copy LABEL: one `rsync -a --delete` of the public tree; its time and its own count of
  # the bytes on the wire (sent + received).
  rsync_copy() {
    local t0 t1 sent received
    t0=$(now)
    rsync -a --delete --stats "rsync://127.0.0.1:$RPORT/public/" "$D/copy/" >"$D/rsync.out"
    t1=$(now)
    sent=$(awk -F: '/^Total bytes sent/ {gsub(/[ ,]/, "", $2); print $2}' "$D/rsync.out")
    received=$(awk -F: '/^Total bytes received/ {gsub(/[ ,]/, "", $2); print $2}' "$D/rsync.out")
    put "$N" "rsync: $1 (s)" "$(minus "$t1" "$t0")"
    put "$N" "rsync: $1 (bytes)" "$((sent + received))"
  }
  rsync_copy "first full copy"
  ln -sfn "$D/repo/next" "$D/current"
  t0=$(now)
  "${AP[@]}" mirror update -keyring="$D/trusted.gpg" fixture >"$D/out" 2>&1
  "${AP[@]}" snapshot create s2 from mirror fixture >>"$D/out" 2>&1
  "${AP[@]}" publish switch -batch -passphrase= -gpg-key="$SIGN_KEY" stable s2 >>"$D/out" 2>&1
  put "$N" "aptly: mirror update + snapshot + publish switch (next) (s)" "$(minus "$(now)" "$t0")"
  rsync_copy "incremental copy"
  put "$N" "rsync: packages at the new version in the copy" \
    "$(cat "$D"/copy/dists/stable/*/binary-*/Packages | grep -c '^Version: 1.0-2$' || true)"
  kill "$RSYNCD" "$UPSTREAM_PID"
  wait "$RSYNCD" "$UPSTREAM_PID" 2>/dev/null || true
  [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$D"
done

# --- report --------------------------------------------------------------------------------
REPORT="$WORK/report.md"
python3 - "$RESULTS" "$NS" >"$REPORT" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
ns = sys.argv[2].split()
v = collections.defaultdict(dict)
order = []
for n, key, value in rows:
    v[n][key] = float(value)
    if key not in order:
        order.append(key)
NAN = float("nan")
g = lambda n, k: v[n].get(k, NAN)

def shown(key, x):
    if x != x:
        return "—"
    if key.endswith("(s)"):
        return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"
    if key.endswith("(bytes)"):
        return f"{x / 1e6:.2f} MB" if x >= 1e5 else f"{x / 1e3:.1f} kB"
    return f"{x:.0f}"

out = print
out("| measure | " + " | ".join(f"N = {n}" for n in ns) + " |")
out("|---|" + "---:|" * len(ns))
for key in order:
    out(f"| {key} | " + " | ".join(shown(key, g(n, key)) for n in ns) + " |")
out()

def ratio(a, b):
    return NAN if a != a or b != b or b == 0 else a / b
fmt = lambda r: "—" if r != r else f"{r:.2f}×"
comps = []
for p in ("on_demand", "immediate"):
    comps += [
        (f"aptgate {p} / rsync: incremental time", f"aptgate {p}: incremental sync (s)", "rsync: incremental copy (s)"),
        (f"aptgate {p} / rsync: incremental bytes", f"aptgate {p}: incremental sync (bytes)", "rsync: incremental copy (bytes)"),
        (f"aptgate {p} / rsync: first full sync time", f"aptgate {p}: first full sync (s)", "rsync: first full copy (s)"),
        (f"aptgate {p} / rsync: first full sync bytes", f"aptgate {p}: first full sync (bytes)", "rsync: first full copy (bytes)"),
    ]
out("Ratios (aptgate / rsync; below 1 is better for aptgate):\n")
out("| comparison | " + " | ".join(f"N = {n}" for n in ns) + " |")
out("|---|" + "---:|" * len(ns))
for name, a, b in comps:
    out(f"| {name} | " + " | ".join(fmt(ratio(g(n, a), g(n, b))) for n in ns) + " |")
out()

n = max(ns, key=int)
verdict = lambda ok: "met" if ok else "**not met**"
new_idx = g(n, "change: Release files + new indices of approved, smallest form (bytes)")
new_debs = g(n, "change: new .debs of approved (bytes)")
out(f"Targets (issue 11) at N = {n}" + ("" if n == "60000" else " (the issue states them for N = 60000)") + ":\n")
out("| target | measured | result |")
out("|---|---|---|")
first = g(n, "aptgate on_demand: first full sync (s)")
out(f"| first full sync of an `on_demand` replica ≤ 2 s | {first:.2f} s | {verdict(first <= 2)} |")
for p, content, what in (("immediate", new_idx + new_debs, "new .debs + new indices, smallest form"),
                         ("on_demand", new_idx, "new indices, smallest form; .debs come on request")):
    b = g(n, f"aptgate {p}: incremental sync (bytes)")
    r = ratio(b, content)
    out(f"| `{p}` incremental bytes ≤ 1.05× the new content ({what}) | {b / 1e6:.2f} MB / {content / 1e6:.2f} MB = {r:.3f}× | {verdict(r <= 1.05)} |")
for p in ("immediate", "on_demand"):
    a, b = g(n, f"aptgate {p}: incremental sync (s)"), g(n, "rsync: incremental copy (s)")
    out(f"| `{p}` incremental time ≤ rsync's | {a:.2f} s vs {b:.2f} s ({fmt(ratio(a, b))}) | {verdict(a <= b)} |")
PY

{
  echo "Run: \`sudo NS=\"$NS\" bench/replicas.sh\` on $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//'), aptgate $(cd "$ROOT" && git describe --always --dirty), $(aptly version | head -1), $(rsync --version | head -1 | awk '{print $1, $3}')."
  echo
  cat "$REPORT"
} >"$WORK/full.md"
cat "$WORK/full.md"

if [ "$WRITE_README" = 1 ]; then
  python3 - "$ROOT/bench/README.md" "$WORK/full.md" <<'PY'
import sys
path, report = sys.argv[1], open(sys.argv[2]).read()
text = open(path).read()
start, end = "<!-- REPLICAS-RESULTS -->", "<!-- /REPLICAS-RESULTS -->"
before, rest = text.split(start, 1)
_, after = rest.split(end, 1)
open(path, "w").write(before + start + "\n" + report + end + after)
PY
  echo "== results written to bench/README.md" >&2
fi
