#!/usr/bin/env bash
# Snapshots, publishing and promotion: aptgate vs aptly vs reprepro on the same synthetic
# upstream, loopback only. See bench/README.md ("channels.sh") for what is measured and how to
# read it. Run as root (installs aptly, reprepro, gnupg, nginx-light, time from Debian's
# packages).
#
#   sudo bench/channels.sh                  # N = 1000 10000 60000
#   sudo NS="1000 10000" bench/channels.sh  # smaller
#   sudo WRITE_README=0 bench/channels.sh   # print the report only
#   sudo UPSTREAM=fixture bench/channels.sh # serve the upstream with `aptgate-fixture serve`
set -euo pipefail

NS=${NS:-"1000 10000 60000"}
# reprepro is skipped above this N.
REPREPRO_MAX=${REPREPRO_MAX:-60000}
# Rollback/promotion cycles after the measured steps (memory growth, median promotion time).
CYCLES=${CYCLES:-20}
# Who serves the synthetic upstream: nginx (default) or `aptgate-fixture serve`. The latter
# answers each request on a kept-alive connection ~40 ms late (no TCP_NODELAY: the body waits
# for the client's delayed ACK of the headers), which dominates every tool's downloads.
UPSTREAM_SERVER=${UPSTREAM:-nginx}
WRITE_README=${WRITE_README:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" != 0 ]; then
  echo "run as root: it installs aptly, reprepro, gnupg and time with apt-get" >&2
  exit 1
fi
need=()
for pkg in aptly:aptly reprepro:reprepro gpg:gnupg curl:curl python3:python3 nginx:nginx-light \
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

WORK=$(mktemp -d /tmp/aptgate-bench-channels.XXXXXX)
chmod 755 "$WORK" # nginx's workers (user nobody) read the upstream from here
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# free_port, wait_http, start_nginx
. "$ROOT/bench/lib.sh"

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

# measure_ag N STEP PID CMD...: like measure, but the peak RSS is the aptgate server's (PID)
# during the step (its VmHWM, reset before the step), not the CLI's (a thin API client), and
# the time is taken to the millisecond.
measure_ag() {
  local n=$1 step=$2 pid=$3
  shift 3
  echo 5 >"/proc/$pid/clear_refs"
  local t0 t1
  t0=$(date +%s.%N)
  if ! "$@" >"$WORK/out" 2>&1; then
    echo "FAILED: aptgate $step: $*" >&2
    tail -20 "$WORK/out" >&2
    exit 1
  fi
  t1=$(date +%s.%N)
  # Wall time to the millisecond (promotions take tens of ms; /usr/bin/time rounds to 10).
  record "$n" aptgate "$step" "$(echo "$t1 - $t0" | bc)" "$(vmhwm "$pid")"
}

# record N TOOL STEP SECONDS KIB: a figure measured another way.
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
  printf '  %-9s %-44s %8.2f s  %7d MiB\n' "$2" "$3" "$4" $(($5 / 1024)) >&2
}

vmhwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
vmrss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }

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
[[channels]]
name = "approved-all"
promotes_from = "testing"
retain = "all"
[retention]
gc_interval = "0s"
EOF
  APTGATE_LOG=warn "$APTGATE" --config "$dir/aptgate.toml" serve >"$dir/serve.log" 2>&1 &
  echo $!
}

# The synthetic upstream, served from DIR (a symlink the script flips from base to next).
start_upstream() { # DIR → sets UPSTREAM and UPSTREAM_PID
  local dir=$1 port
  port=$(free_port)
  if [ "$UPSTREAM_SERVER" = fixture ]; then
    "$FIXTURE" serve "$dir" --port "$port" >/dev/null 2>&1 &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
  else
    start_nginx "$dir" "$port"
    UPSTREAM_PID=$NGINX_PID
  fi
  UPSTREAM="http://127.0.0.1:$port"
  wait_http "$UPSTREAM/dists/stable/InRelease"
}

# versions_in URL-PREFIX: how many packages at version 1.0-2 (bumped) the repository's four
# binary indices list.
versions_in() {
  local n=0 c a k
  for c in main contrib; do
    for a in amd64 arm64; do
      k=$(curl -sf "$1/dists/stable/$c/binary-$a/Packages" | grep -c '^Version: 1.0-2$' || true)
      n=$((n + k))
    done
  done
  echo "$n"
}

NOTES="$WORK/notes.tsv" # N  what  value
: >"$NOTES"
note() { printf '%s\t%s\t%s\n' "$@" >>"$NOTES"; echo "  note: $2: $3" >&2; }

for N in $NS; do
  echo "== N = $N packages" >&2
  D="$WORK/$N"
  mkdir -p "$D"
  /usr/bin/time -f "%e %M" -o "$WORK/time" \
    "$FIXTURE" generate "$D/repo" --packages "$N" --next-percent 5 --large-mib 1 --medium-kib 16 >"$D/generated.tsv"
  read -r secs kib <"$WORK/time"
  record "$N" fixture "generate base + next" "$secs" "$kib"
  KEY="$D/repo/base/key.asc"
  ln -sfn "$D/repo/base" "$D/current"
  start_upstream "$D/current"
  # Ten bumped programs whose new versions need their bumped libraries.
  ONLY=$(awk -F'\t' '$1 == "selective" { print $2 }' "$D/generated.tsv")
  [ -n "$ONLY" ] || { echo "the generator named no packages for the selective promotion" >&2; exit 1; }

  # --- aptgate, on_demand --------------------------------------------------------------
  PORT=$(free_port)
  PID=$(start_aptgate "$D/aptgate" "$PORT" "$UPSTREAM" "$KEY" on_demand)
  PIDS+=("$PID")
  wait_http "http://127.0.0.1:$PORT/healthz"
  A=("$APTGATE" --config "$D/aptgate/aptgate.toml")
  CH="http://127.0.0.1:$PORT/channels"
  measure_ag "$N" "sync + snapshot + publish (on_demand)" "$PID" "${A[@]}" sync
  measure_ag "$N" "first promotion (retain used: fetches nothing)" "$PID" "${A[@]}" promote --from testing --to approved
  ln -sfn "$D/repo/next" "$D/current"
  measure_ag "$N" "incremental sync (rescues the 5 % approved uses)" "$PID" "${A[@]}" sync
  note "$N" "bumped packages in testing after the next sync (aptgate)" "$(versions_in "$CH/testing")"
  note "$N" "old versions approved uses, rescued by the next sync (aptgate)" \
    "$(grep -o '[0-9]* rescued' "$WORK/out" | awk '{print $1}' | head -1)"
  measure_ag "$N" "selective promotion of 10 (renders .xz)" "$PID" "${A[@]}" promote --from testing --to approved --only "$ONLY"
  note "$N" "bumped packages in approved after the selective promotion (aptgate)" "$(versions_in "$CH/approved")"
  measure_ag "$N" "whole promotion" "$PID" "${A[@]}" promote --from testing --to approved
  note "$N" "bumped packages in approved after the whole promotion (aptgate)" "$(versions_in "$CH/approved")"
  measure_ag "$N" "rollback" "$PID" "${A[@]}" rollback approved
  measure_ag "$N" "whole promotion again" "$PID" "${A[@]}" promote --from testing --to approved
  # Rollback/promotion cycles: the promotion's median time, and whether memory grows.
  : >"$WORK/cycles"
  echo 5 >"/proc/$PID/clear_refs"
  for cycle in $(seq 1 "$CYCLES"); do
    "${A[@]}" rollback approved >/dev/null
    t0=$(date +%s.%N)
    "${A[@]}" promote --from testing --to approved >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc >>"$WORK/cycles"
    if [ "$cycle" = 1 ]; then
      note "$N" "server RSS after rollback/promotion cycle 1 (MiB)" "$(vmrss "$PID")"
    fi
  done
  note "$N" "server RSS after rollback/promotion cycle $CYCLES (MiB)" "$(vmrss "$PID")"
  record "$N" aptgate "whole promotion, median of $CYCLES rollback/promotion cycles" \
    "$(sort -n "$WORK/cycles" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" "$(vmhwm "$PID")"
  measure_ag "$N" "first promotion with retain = all (stores every .deb)" "$PID" "${A[@]}" promote --from testing --to approved-all
  kill "$PID"

  # --- aptgate, immediate ----------------------------------------------------------------
  ln -sfn "$D/repo/base" "$D/current"
  PORT=$(free_port)
  PID=$(start_aptgate "$D/aptgate-immediate" "$PORT" "$UPSTREAM" "$KEY" immediate)
  PIDS+=("$PID")
  wait_http "http://127.0.0.1:$PORT/healthz"
  measure_ag "$N" "sync + snapshot + publish (immediate)" "$PID" "$APTGATE" --config "$D/aptgate-immediate/aptgate.toml" sync
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
  note "$N" "bumped packages in the pulled snapshot (aptly)" \
    "$("${AP[@]}" snapshot show -with-packages s3 | grep -c '_1\.0-2_' || true)"

  # --- reprepro --------------------------------------------------------------------------
  if [ "$N" -le "$REPREPRO_MAX" ]; then
  ln -sfn "$D/repo/base" "$D/current"
  R="$D/reprepro"
  mkdir -p "$R/conf"
  gpg --batch --quiet --import "$KEY" 2>/dev/null
  FIXTURE_KEY=$(gpg --batch --with-colons --show-keys "$KEY" | awk -F: '/^fpr/ {print $10; exit}')
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
VerifyRelease: ${FIXTURE_KEY: -16}
EOF
  measure "$N" reprepro "update (download + export)" reprepro -b "$R" --noskipold update
  ln -sfn "$D/repo/next" "$D/current"
  measure "$N" reprepro "update (next)" reprepro -b "$R" --noskipold update
  fi

  kill "$UPSTREAM_PID"
  wait "$UPSTREAM_PID" 2>/dev/null || true
  rm -rf "$D"
done

# --- report --------------------------------------------------------------------------------
REPORT="$WORK/report.md"
python3 - "$RESULTS" "$NOTES" "$NS" >"$REPORT" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
notes = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]
ns = sys.argv[3].split()
t = collections.defaultdict(dict)
order = []
for n, tool, step, secs, kib in rows:
    t[n][(tool, step)] = (float(secs), int(kib))
    if (tool, step) not in order:
        order.append((tool, step))
NAN = float("nan")
def s(n, tool, step):
    return t[n].get((tool, step), (NAN, 0))[0]
def mib(kib):
    return kib / 1024
out = print
out("Time (wall) per step, and in brackets the peak RSS: of the command for aptly and reprepro;")
out("for aptgate, of the **server** during that step (its `VmHWM`, reset before each step; the")
out("CLI is a thin API client of ~10 MiB).\n")
out("| step | " + " | ".join(f"N = {n}" for n in ns) + " |")
out("|---|" + "---:|" * len(ns))
for tool, step in order:
    cells = []
    for n in ns:
        if (tool, step) not in t[n]:
            cells.append("skipped")
            continue
        secs, kib = t[n][(tool, step)]
        shown = f"{secs * 1000:.0f} ms" if secs < 1 else f"{secs:.2f} s"
        cells.append(f"{shown} ({mib(kib):.0f} MiB)")
    out(f"| {tool}: {step} | " + " | ".join(cells) + " |")
out()
if notes:
    out("Checks (packages at the bumped version 1.0-2 in the published indices; the generator bumps")
    out("5 %: a program and the library its new version needs, in pairs):\n")
    out("| check | " + " | ".join(f"N = {n}" for n in ns) + " |")
    out("|---|" + "---:|" * len(ns))
    what = []
    for n, w, v in notes:
        if w not in what:
            what.append(w)
    vals = {(n, w): v for n, w, v in notes}
    for w in what:
        out(f"| {w} | " + " | ".join(vals.get((n, w), "—") for n in ns) + " |")
    out()

def ratio(num, den):
    return NAN if den != den or num != num or den == 0 else num / den
def fmt(r):
    return "—" if r != r else f"{r:.1f}×"
aptly_full = lambda n: s(n,"aptly","mirror update")+s(n,"aptly","snapshot create")+s(n,"aptly","publish snapshot")
aptly_incr = lambda n: s(n,"aptly","mirror update (next)")+s(n,"aptly","snapshot create (next)")+s(n,"aptly","publish switch")
aptly_pull = lambda n: s(n,"aptly","snapshot pull of 10")+s(n,"aptly","publish switch (pulled)")
ag = lambda step: (lambda n: s(n, "aptgate", step))
median = lambda n: s(n, "aptgate", next((st for (tool, st) in t[n] if tool == "aptgate" and st.startswith("whole promotion, median")), ""))
comps = [
    ("aptly update+snapshot+publish / aptgate immediate sync", "≥ 3×", aptly_full, ag("sync + snapshot + publish (immediate)")),
    ("aptly update+snapshot+publish / aptgate on_demand sync", "≥ 20×", aptly_full, ag("sync + snapshot + publish (on_demand)")),
    ("aptly update+snapshot+publish / aptgate on_demand sync + first promotion with retain = all", "—", aptly_full,
     lambda n: s(n,"aptgate","sync + snapshot + publish (on_demand)")+s(n,"aptgate","first promotion with retain = all (stores every .deb)")),
    ("aptly incremental (update+snapshot+switch) / aptgate incremental sync (with rescue)", "≥ 5× (issue 3)", aptly_incr, ag("incremental sync (rescues the 5 % approved uses)")),
    ("aptly publish switch / aptgate whole promotion (median of the cycles)", "≥ 50×", lambda n: s(n,"aptly","publish switch"), median),
    ("aptly publish switch / aptgate whole promotion (after the selective one)", "—", lambda n: s(n,"aptly","publish switch"), ag("whole promotion")),
    ("aptly publish switch / aptgate rollback", "—", lambda n: s(n,"aptly","publish switch"), ag("rollback")),
    ("aptly pull+switch / aptgate selective promotion of 10", "≥ 3× (issue 3)", aptly_pull, ag("selective promotion of 10 (renders .xz)")),
    ("reprepro update / aptgate immediate sync", "—", lambda n: s(n,"reprepro","update (download + export)"), ag("sync + snapshot + publish (immediate)")),
    ("reprepro update (next) / aptgate incremental sync", "—", lambda n: s(n,"reprepro","update (next)"), ag("incremental sync (rescues the 5 % approved uses)")),
]
out("Ratios (aptly or reprepro time / aptgate time; higher is better for aptgate):\n")
out("| comparison | target | " + " | ".join(f"N = {n}" for n in ns) + " |")
out("|---|---|" + "---:|" * len(ns))
for name, target, num, den in comps:
    out(f"| {name} | {target} | " + " | ".join(fmt(ratio(num(n), den(n))) for n in ns) + " |")
out()

# Targets, at the largest N measured (the issue states them for N = 60000).
n = max(ns, key=int)
lo_n = min(ns, key=int)
def verdict(ok):
    return "met" if ok else "**not met**"
out(f"Targets (issue 7) at N = {n}" + ("" if n == "60000" else " (the issue states them for N = 60000)") + ":\n")
out("| target | measured | result |")
out("|---|---|---|")
def target(name, num, den, need, extra=""):
    r = ratio(num, den)
    out(f"| {name} | {fmt(r)} ({den:.3f} s vs {num:.2f} s){extra} | {verdict(r == r and r >= need)} |")
target("whole promotion (retain = used) ≥ 50× faster than aptly's publish switch (median of the cycles)",
       s(n,"aptly","publish switch"), median(n), 50)
if len(ns) > 1:
    meds = [median(m) for m in ns]
    flat = " → ".join(f"{x * 1000:.0f} ms" for x in meds)
    out(f"| whole promotion flat: its time at N = {n} ≤ 2× its time at N = {lo_n} (medians; N = {', '.join(ns)}) | {flat} ({median(n) / median(lo_n):.2f}×) | {verdict(median(n) <= 2 * median(lo_n))} |")
target("`on_demand` sync + snapshot + publish ≥ 20× faster than aptly's mirror update + snapshot + publish",
       aptly_full(n), ag("sync + snapshot + publish (on_demand)")(n), 20)
target("`immediate` sync + snapshot + publish ≥ 3× faster", aptly_full(n), ag("sync + snapshot + publish (immediate)")(n), 3)
ag_steps = [(k, v) for k, v in t[n].items() if k[0] == "aptgate"]
(peak_step, (_, peak_kib)) = max(ag_steps, key=lambda kv: kv[1][1])
aptly_peak = max([v[1] for k, v in t[n].items() if k[0] == "aptly"] or [0])
out(f"| aptgate server peak RSS < 200 MB through the whole run | {peak_kib * 1024 / 1e6:.0f} MB ({mib(peak_kib):.0f} MiB, in \"{peak_step[1]}\"); aptly's largest step {aptly_peak * 1024 / 1e6:.0f} MB | {verdict(peak_kib * 1024 < 200e6)} |")
vals = {(m, w): v for m, w, v in notes}
first = next((v for (m, w), v in vals.items() if m == n and "cycle 1 " in w), None)
last = next((v for (m, w), v in vals.items() if m == n and "cycle" in w and "cycle 1 " not in w), None)
if first and last:
    grew = int(last) > int(first) * 1.05 + 2
    out(f"| no RSS growth over the rollback/promotion cycles | {first} MiB after cycle 1, {last} MiB after the last | {verdict(not grew)} |")
PY

{
  echo "Run: \`sudo NS=\"$NS\" bench/channels.sh\` on $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores, upstream served by $UPSTREAM_SERVER, aptgate $(cd "$ROOT" && git describe --always --dirty), $(aptly version | head -1), reprepro $(reprepro --version 2>&1 | head -1 | awk '{print $NF}')."
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
