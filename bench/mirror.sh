#!/usr/bin/env bash
# Benchmark: aptgate's pull-through mirror against nginx (the same files straight from disk),
# apt-cacher-ng and approx (proxying the same fixture upstream), all on 127.0.0.1.
# Prints a markdown report and writes it into bench/README.md between the RESULTS markers.
#
#   sudo bench/mirror.sh               # full run, about 3-4 minutes on 2 cores
#   sudo DURATION=3 bench/mirror.sh    # shorter wrk runs
#
# Knobs (environment): DURATION (s per wrk cell, 10), ROUNDS (runs per cell, 2), THREADS (2), CONNS (16), COLD_CLIENTS (50),
# COLD_RATE (upstream rate in the cold case, nginx limit_rate syntax, 25m = 25 MiB/s),
# APT_PACKAGES (packages in the index `apt-get update` reads, 60000; 0 skips that part),
# APT_ROUNDS (timed `apt-get update`s per server, 5), WRITE_README (1; 0 leaves bench/README.md alone).
#
# Needs root: approx reads /etc/approx/approx.conf (backed up and restored on exit) and runs as
# user approx. Installs nginx-light, wrk, apt-cacher-ng, approx, socat, curl if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-16}
COLD_CLIENTS=${COLD_CLIENTS:-50}
COLD_RATE=${COLD_RATE:-25m}
APT_PACKAGES=${APT_PACKAGES:-60000}
APT_ROUNDS=${APT_ROUNDS:-5}
WRITE_README=${WRITE_README:-1}

log() { printf '\n== %s\n' "$*" >&2; }
say() { printf '   %s\n' "$*" >&2; }
die() { printf 'mirror.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (approx needs /etc/approx/approx.conf and its own user)"

# --- tools --------------------------------------------------------------------------------------
need=()
for pkg in nginx:nginx-light wrk:wrk apt-cacher-ng:apt-cacher-ng /usr/sbin/approx:approx \
           socat:socat curl:curl systemd-socket-activate:systemd ss:iproute2 apt-get:apt; do
  command -v "${pkg%%:*}" >/dev/null || need+=("${pkg#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# --- scratch space and cleanup ------------------------------------------------------------------
T=$(mktemp -d /tmp/aptgate-bench.XXXXXX)
chmod 755 "$T"   # approx (user approx) must reach its cache dir below
SHM=""
PIDS=()          # long-running servers, killed in reverse order
CLIENT_PIDS=()   # wrk and the cold-case curls
APPROX_CONF=/etc/approx/approx.conf
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  log "cleaning up"
  if [ "$rc" != 0 ]; then # show what the servers said
    for f in "$T"/*.log "$T"/*.out "$T"/*.err "$T"/acng-log/apt-cacher.err; do
      [ -s "$f" ] && { printf -- '--- %s (last lines)\n' "${f#"$T"/}"; tail -n 8 "$f"; } >&2
    done
  fi
  for pid in "${CLIENT_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}" "${CLIENT_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -f "$T/approx.conf.orig" ]; then cp "$T/approx.conf.orig" "$APPROX_CONF"; fi
  if [ -f "$T/approx.conf.absent" ]; then rm -f "$APPROX_CONF"; fi
  [ -n "$SHM" ] && rm -rf "$SHM"
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

USED_PORTS=" "
free_port() { # VAR: a free TCP port on 127.0.0.1, distinct from the ones handed out before
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))   # acng cannot bind ports >= 32768; ephemeral ports start there
    [[ $USED_PORTS == *" $p "* ]] && continue
    [ -z "$(ss -Htln "( sport = :$p )")" ] || continue
    USED_PORTS+="$p "
    printf -v "$1" %s "$p"
    return
  done
}

wait_http() { # URL PID: poll until URL answers 2xx (up to 20 s); fail early if PID died
  for _ in $(seq 1 200); do
    curl -sf --max-time 2 -o /dev/null "$1" && return 0
    kill -0 "$2" 2>/dev/null || die "process $2 exited before $1 answered"
    sleep 0.1
  done
  die "no answer from $1"
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# --- build and fixture --------------------------------------------------------------------------
log "building release binaries: cargo build --release -p aptgate -p aptgate-tests"
cargo build --release -p aptgate -p aptgate-tests >&2
BIN=$ROOT/target/release

log "generating the fixture repository (50 MiB big-data, ~1 MiB medium-data)"
REPO=$T/repo
"$BIN/aptgate-fixture" generate "$REPO" --large-mib 50 --medium-kib 1024 > "$T/packages.tsv"
sed 's/^/   /' "$T/packages.tsv" >&2
pkg_field() { awk -F'\t' -v n="$1" -v f="$2" '$1==n {print $f; exit}' "$T/packages.tsv"; }
BIG=$(pkg_field big-data 6)
[ -n "$BIG" ] || die "the fixture has no big-data package"
# The ~1 MiB .deb: medium-data if the fixture tool made it, else the package closest to 1 MiB.
MEDIUM=$(pkg_field medium-data 6)
if [ -z "$MEDIUM" ]; then
  MEDIUM=$(awk -F'\t' 'NF >= 6 && $1 != "big-data" {d = $4 - 1048576; if (d < 0) d = -d; print d, $6}' \
    "$T/packages.tsv" | sort -n | head -1 | cut -d' ' -f2)
fi
# The ~2 KB file: the index file under dists/stable closest to 2048 bytes (by-hash copies aside).
SMALL=$(cd "$REPO" && find dists/stable -type f -not -path '*/by-hash/*' -printf '%s %p\n' \
  | awk '{d = $1 - 2048; if (d < 0) d = -d; print d, $2}' | sort -n | head -1 | cut -d' ' -f2)
# The Packages index aptgate must have verified before it serves pool files: whatever Release lists.
PKG_INDEX=""
for ext in .xz .gz ""; do
  if grep -q " main/binary-amd64/Packages$ext\$" "$REPO/dists/stable/Release"; then
    PKG_INDEX=dists/stable/main/binary-amd64/Packages$ext; break
  fi
done
[ -n "$PKG_INDEX" ] || die "dists/stable/Release lists no main/binary-amd64/Packages"

FILES=(SMALL MEDIUM BIG)
declare -A PATH_OF=([SMALL]=$SMALL [MEDIUM]=$MEDIUM [BIG]=$BIG) SIZE SHA
for f in "${FILES[@]}"; do
  SIZE[$f]=$(stat -c %s "$REPO/${PATH_OF[$f]}")
  SHA[$f]=$(sha_of "$REPO/${PATH_OF[$f]}")
done
label() {
  case $1 in
    SMALL) echo "${SIZE[SMALL]} B index";;
    *) awk -v s="${SIZE[$1]}" 'BEGIN { if (s >= 10485760) printf "%.0f MiB .deb", s / 1048576;
                                       else printf "%.2f MiB .deb", s / 1048576 }';;
  esac
}
say "2 KB-ish: $SMALL (${SIZE[SMALL]} B)"
say "1 MiB:    $MEDIUM (${SIZE[MEDIUM]} B)"
say "50 MiB:   $BIG (${SIZE[BIG]} B)"
say "index aptgate verifies first: $PKG_INDEX"

# A repository with a real archive's index size, for timing `apt-get update` (small .debs only).
if [ "$APT_PACKAGES" -gt 0 ]; then
  log "generating a second fixture with $APT_PACKAGES packages for apt-get update"
  BIG_REPO=$T/big-repo
  "$BIN/aptgate-fixture" generate "$BIG_REPO" --packages "$APT_PACKAGES" --large-mib 1 --medium-kib 16 >/dev/null
  say "dists/stable/main/binary-amd64/Packages.xz: $(stat -c %s "$BIG_REPO/dists/stable/main/binary-amd64/Packages.xz" 2>/dev/null || echo '?') B"
else
  BIG_REPO=$REPO
fi

# --- nginx: the competitor, and the upstreams (one per proxy, so each access log counts one) -----
free_port P_NGINX; free_port P_UP_AG; free_port P_UP_ACNG; free_port P_UP_APPROX; free_port P_SLOW
free_port P_AG; free_port P_AG_COLD; free_port P_ACNG; free_port P_APPROX
free_port P_NGINX_BIG; free_port P_UP_BIG; free_port P_AG_BIG
log "nginx on :$P_NGINX (competitor); upstreams :$P_UP_AG (aptgate) :$P_UP_ACNG (apt-cacher-ng) :$P_UP_APPROX (approx); throttled upstream :$P_SLOW ($COLD_RATE/s)"
mkdir -p "$T/nginx-tmp"
cat > "$T/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $T/nginx.pid;
error_log $T/nginx.err;
events { worker_connections 4096; }
http {
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path $T/nginx-tmp;
  types { application/octet-stream deb; }
  default_type application/octet-stream;
  log_format up '\$request_uri \$status \$body_bytes_sent \$request_time';
  server { listen 127.0.0.1:$P_NGINX;     root $REPO; access_log off; }
  server { listen 127.0.0.1:$P_UP_AG;     root $REPO; access_log $T/up-aptgate.log up; }
  server { listen 127.0.0.1:$P_UP_ACNG;   root $REPO; access_log $T/up-apt-cacher-ng.log up; }
  server { listen 127.0.0.1:$P_UP_APPROX; root $REPO; access_log $T/up-approx.log up; }
  server { listen 127.0.0.1:$P_SLOW;      root $REPO; access_log $T/up-slow.log up; limit_rate $COLD_RATE; }
  server { listen 127.0.0.1:$P_NGINX_BIG; root $BIG_REPO; access_log off; }
  server { listen 127.0.0.1:$P_UP_BIG;    root $BIG_REPO; access_log off; }
}
EOF
nginx -p "$T" -e "$T/nginx.err" -c "$T/nginx.conf" &
PIDS+=($!)
NGINX_PID=$!
wait_http "http://127.0.0.1:$P_UP_AG/dists/stable/InRelease" "$NGINX_PID"

# Requests upstream saw for a path (access logs are written when a response ends).
upstream_count() { # PROXY PATH
  [ -f "$T/up-$1.log" ] || { echo 0; return; }
  awk -v p="/$2" '$1 == p' "$T/up-$1.log" | wc -l
}

# --- aptgate ------------------------------------------------------------------------------------
start_aptgate() { # PORT DATA_DIR UPSTREAM_PORT [KEY] -> APTGATE_PID
  cat > "$T/aptgate-$1.toml" <<EOF
data_dir = "$2"
[server]
listen = "127.0.0.1:$1"
[[sources]]
name = "fixture"
url = "http://127.0.0.1:$3"
suites = ["stable"]
components = ["main", "contrib"]
architectures = ["amd64"]
keyring = ["${4:-$REPO/key.asc}"]
EOF
  APTGATE_LOG=warn "$BIN/aptgate" --config "$T/aptgate-$1.toml" serve >"$T/aptgate-$1.log" 2>&1 &
  APTGATE_PID=$!
  PIDS+=("$APTGATE_PID")
  wait_http "http://127.0.0.1:$1/healthz" "$APTGATE_PID"
}
log "aptgate on :$P_AG"
start_aptgate "$P_AG" "$T/aptgate-data" "$P_UP_AG"
AG_PID=$APTGATE_PID

# --- apt-cacher-ng ------------------------------------------------------------------------------
# A Remap- rule maps /fixture to the upstream: acng does not proxy to 127.0.0.1:<port> URLs given
# by clients unless AllowUserPorts lists the port, and a remap also gives it the same URL shape as
# approx. Its own cache, log and config dirs; foreground, so this script owns the process.
log "apt-cacher-ng on :$P_ACNG"
mkdir -p "$T/acng-conf" "$T/acng-cache" "$T/acng-log"
cat > "$T/acng-conf/acng.conf" <<EOF
CacheDir: $T/acng-cache
LogDir: $T/acng-log
SupportDir: /usr/lib/apt-cacher-ng
Port: $P_ACNG
BindAddress: 127.0.0.1
PidFile: $T/acng.pid
SocketPath: $T/acng.socket
Remap-fixture: /fixture ; http://127.0.0.1:$P_UP_ACNG/
AllowUserPorts: 80 $P_UP_ACNG
EOF
apt-cacher-ng -c "$T/acng-conf" ForeGround=1 >"$T/acng.out" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_ACNG/fixture/dists/stable/InRelease" "$!"

# --- approx -------------------------------------------------------------------------------------
# approx is inetd-style (one process per connection, reading /etc/approx/approx.conf);
# systemd-socket-activate --inetd listens for it. It exits when it cannot reach syslog, so a
# throwaway /dev/log is provided when there is none (socat removes it when it exits).
log "approx on :$P_APPROX (inetd-style, behind systemd-socket-activate; /etc/approx/approx.conf backed up)"
if [ -e "$APPROX_CONF" ]; then cp -p "$APPROX_CONF" "$T/approx.conf.orig"; else touch "$T/approx.conf.absent"; fi
mkdir -p "$T/approx-cache" /etc/approx
chown approx:approx "$T/approx-cache"
# shellcheck disable=SC2016 # $cache is approx syntax
printf 'fixture\thttp://127.0.0.1:%s\n$cache\t%s\n' "$P_UP_APPROX" "$T/approx-cache" > "$APPROX_CONF"
if [ ! -e /dev/log ]; then
  socat -u UNIX-RECV:/dev/log,mode=666 OPEN:/dev/null >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do [ -S /dev/log ] && break; sleep 0.1; done
fi
systemd-socket-activate --inetd -a -l "127.0.0.1:$P_APPROX" \
  setpriv --reuid=approx --regid=approx --init-groups /usr/sbin/approx >"$T/approx.out" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_APPROX/fixture/dists/stable/InRelease" "$!"

SERVERS=(aptgate nginx apt-cacher-ng approx)
PROXIES=(aptgate apt-cacher-ng approx)
declare -A URL=(
  [aptgate]="http://127.0.0.1:$P_AG/mirror/fixture"
  [nginx]="http://127.0.0.1:$P_NGINX"
  [apt-cacher-ng]="http://127.0.0.1:$P_ACNG/fixture"
  [approx]="http://127.0.0.1:$P_APPROX/fixture"
)

# --- warm the caches, check contents, confirm the second fetch is a hit -------------------------
log "warming: InRelease, $PKG_INDEX, then each benchmarked file, through every server"
declare -A SECOND   # upstream requests caused by a second fetch, per proxy and file
for s in "${SERVERS[@]}"; do
  for p in dists/stable/InRelease "$PKG_INDEX"; do
    curl -sf -o /dev/null "${URL[$s]}/$p" || die "warming $s: $p failed"
  done
  for f in "${FILES[@]}"; do
    curl -sf -o "$T/warm.out" "${URL[$s]}/${PATH_OF[$f]}" || die "warming $s: ${PATH_OF[$f]} failed"
    [ "$(sha_of "$T/warm.out")" = "${SHA[$f]}" ] || die "$s served a wrong ${PATH_OF[$f]}"
  done
done
sleep 0.2   # let the last access-log lines land
for s in "${PROXIES[@]}"; do
  for f in "${FILES[@]}"; do
    before=$(upstream_count "$s" "${PATH_OF[$f]}")
    curl -sf -o "$T/warm.out" "${URL[$s]}/${PATH_OF[$f]}" || die "second fetch from $s failed"
    [ "$(sha_of "$T/warm.out")" = "${SHA[$f]}" ] || die "$s served a wrong ${PATH_OF[$f]} from cache"
    sleep 0.1
    SECOND[$s,$f]=$(($(upstream_count "$s" "${PATH_OF[$f]}") - before))
  done
  say "$s: second fetch went upstream: index ${SECOND[$s,SMALL]}, 1 MiB ${SECOND[$s,MEDIUM]}, 50 MiB ${SECOND[$s,BIG]} time(s)"
  for f in MEDIUM BIG; do
    [ "${SECOND[$s,$f]}" = 0 ] || say "WARNING: $s did not serve ${PATH_OF[$f]} from its cache"
  done
done

# --- cached throughput ------------------------------------------------------------------------
# Each cell gets DURATION seconds in ROUNDS runs, the servers taking turns in alternating order
# (a b c d, d c b a, ...), so a change in background load does not favour whoever runs first.
# Only 2xx responses count: requests/s = good responses / time; MiB/s = good responses × file size
# / time (bodies only, unlike wrk's Transfer/sec, which also counts headers and error pages).
declare -A N_GOOD N_BAD SECS P50SUM RPS MIBS P50 BAD DURING
run_wrk() { # SERVER FILE SECONDS: one wrk run, added to the cell's totals
  local out=$T/wrk-$1-$2.txt total bad secs p50
  # In the background, so a signal to this script is handled at once (bash defers traps while a
  # foreground child runs, and ignores SIGINT altogether if that child survives it).
  wrk -t"$THREADS" -c"$CONNS" -d"${3}s" --timeout 10s --latency "${URL[$1]}/${PATH_OF[$2]}" >"$out" 2>&1 &
  CLIENT_PIDS=($!)
  wait "${CLIENT_PIDS[0]}" || die "wrk failed against $1: $(cat "$out")"
  CLIENT_PIDS=()
  read -r total bad secs p50 < <(awk '
    function secs(v) { if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1e6
                       if (v ~ /ms$/) return substr(v, 1, length(v) - 2) / 1e3
                       if (v ~ /m$/)  return substr(v, 1, length(v) - 1) * 60
                       if (v ~ /h$/)  return substr(v, 1, length(v) - 1) * 3600
                       return substr(v, 1, length(v) - 1) }
    / requests in / { n = $1; d = $4; sub(/,$/, "", d); d = secs(d) }
    /Non-2xx or 3xx responses:/ { b = $NF }
    $1 == "50%" { p = secs($2) * 1000 }
    END { printf "%d %d %s %.3f\n", n, b, d, p }' "$out")
  if [ -z "$secs" ] || [ "$total" -le 0 ]; then die "no result from wrk against $1: $(cat "$out")"; fi
  N_GOOD[$1,$2]=$(( ${N_GOOD[$1,$2]:-0} + total - bad ))
  N_BAD[$1,$2]=$(( ${N_BAD[$1,$2]:-0} + bad ))
  SECS[$1,$2]=$(awk -v a="${SECS[$1,$2]:-0}" -v b="$secs" 'BEGIN { print a + b }')
  P50SUM[$1,$2]=$(awk -v a="${P50SUM[$1,$2]:-0}" -v b="$p50" 'BEGIN { print a + b }')
  say "$(printf '%-14s %8.0f req/s %9.1f MiB/s  p50 %8.2f ms  failed %s' "$1" \
    "$(awk -v n="$total" -v b="$bad" -v d="$secs" 'BEGIN { print (n - b) / d }')" \
    "$(awk -v n="$total" -v b="$bad" -v d="$secs" -v s="${SIZE[$2]}" 'BEGIN { print (n - b) * s / d / 1048576 }')" \
    "$p50" "$bad")"
}
ROUND_SECS=$(( (DURATION + ROUNDS - 1) / ROUNDS ))
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
for f in "${FILES[@]}"; do
  log "wrk -t$THREADS -c$CONNS, $ROUNDS × ${ROUND_SECS}s per server: $(label "$f") (${PATH_OF[$f]})"
  for s in "${PROXIES[@]}"; do DURING[$s,$f]=$(upstream_count "$s" "${PATH_OF[$f]}"); done
  order=("${SERVERS[@]}")
  for ((r = 0; r < ROUNDS; r++)); do
    for s in "${order[@]}"; do run_wrk "$s" "$f" "$ROUND_SECS"; done
    for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do t=${order[i]}; order[i]=${order[j]}; order[j]=$t; done
  done
  for s in "${SERVERS[@]}"; do
    RPS[$s,$f]=$(awk -v n="${N_GOOD[$s,$f]}" -v d="${SECS[$s,$f]}" 'BEGIN { printf "%.0f", n / d }')
    MIBS[$s,$f]=$(awk -v n="${N_GOOD[$s,$f]}" -v d="${SECS[$s,$f]}" -v s="${SIZE[$f]}" \
      'BEGIN { printf "%.1f", n * s / d / 1048576 }')
    P50[$s,$f]=$(awk -v p="${P50SUM[$s,$f]}" -v r="$ROUNDS" 'BEGIN { printf "%.2f", p / r }')
    BAD[$s,$f]=${N_BAD[$s,$f]}
  done
  sleep 0.2
  for s in "${PROXIES[@]}"; do
    DURING[$s,$f]=$(($(upstream_count "$s" "${PATH_OF[$f]}") - ${DURING[$s,$f]}))
  done
done
AG_RSS=$(awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$AG_PID/status")
say "aptgate peak RSS after the cached runs: $AG_RSS MiB"

# --- cold case ------------------------------------------------------------------------------
log "cold case: fresh aptgate on :$P_AG_COLD, upstream throttled to $COLD_RATE/s, $COLD_CLIENTS clients want the uncached $(label BIG) at once"
start_aptgate "$P_AG_COLD" "$T/aptgate-cold" "$P_SLOW"
COLD_PID=$APTGATE_PID
COLD_URL="http://127.0.0.1:$P_AG_COLD/mirror/fixture"
for p in dists/stable/InRelease "$PKG_INDEX"; do
  curl -sf -o /dev/null "$COLD_URL/$p" || die "cold aptgate: $p failed"
done
# Client bodies go to RAM when there is room, so the disk does not slow the clients down.
need_kib=$(((COLD_CLIENTS + 2) * SIZE[BIG] / 1024))
if [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')" -gt "$need_kib" ] 2>/dev/null; then
  SHM=$(mktemp -d /dev/shm/aptgate-bench.XXXXXX)
  COLD_DIR=$SHM
else
  COLD_DIR=$T/cold
fi
run_clients() { # URL: COLD_CLIENTS curls at once -> CL_WALL (s), CL_BAD, CL_TTFB_MEDIAN/MAX, CL_FIRST/LAST
  local start pid i code
  rm -rf "$COLD_DIR"; mkdir -p "$COLD_DIR"
  start=$(date +%s.%N)
  for i in $(seq 1 "$COLD_CLIENTS"); do
    curl -s --max-time 300 -o "$COLD_DIR/$i.body" \
      -w '%{http_code} %{time_starttransfer} %{time_total}\n' "$1" >"$COLD_DIR/$i.time" &
    CLIENT_PIDS+=($!)
  done
  for pid in "${CLIENT_PIDS[@]}"; do wait "$pid" || true; done
  CL_WALL=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.3f", a - b }')
  CLIENT_PIDS=()
  CL_BAD=0
  for i in $(seq 1 "$COLD_CLIENTS"); do
    if ! read -r code _ _ <"$COLD_DIR/$i.time" || [ "$code" != 200 ] \
       || [ "$(sha_of "$COLD_DIR/$i.body")" != "${SHA[BIG]}" ]; then
      CL_BAD=$((CL_BAD + 1))
    fi
  done
  read -r CL_TTFB_MEDIAN CL_TTFB_MAX _ < <(column_stats 2)
  read -r _ CL_LAST CL_FIRST < <(column_stats 3)
  rm -rf "$COLD_DIR"
}
column_stats() { # N: median, max and min of column N of the clients' timings
  awk -v c="$1" '{ print $c }' "$COLD_DIR"/*.time | sort -g | awk '{ v[NR] = $1 } END {
    printf "%.3f %.3f %.3f\n", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[NR], v[1] }'
}
run_clients "$COLD_URL/$BIG"
cold_all_done=$CL_WALL cold_bad=$CL_BAD ttfb_median=$CL_TTFB_MEDIAN ttfb_max=$CL_TTFB_MAX
first_done=$CL_FIRST last_done=$CL_LAST
sleep 0.2
cold_upstream=$(upstream_count slow "$BIG")
cold_upstream_secs=$(awk -v p="/$BIG" '$1 == p { t = $4 } END { printf "%.3f", t }' "$T/up-slow.log")
COLD_RSS=$(awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$COLD_PID/status")
say "upstream requests for the file: $cold_upstream (took ${cold_upstream_secs} s)"
say "TTFB median ${ttfb_median} s, max ${ttfb_max} s; clients done ${first_done}..${last_done} s; all done ${cold_all_done} s"
say "clients without a correct body: $cold_bad; aptgate peak RSS $COLD_RSS MiB"
# The fan-out alone, for reference: the same clients fetch the file from nginx (from disk).
run_clients "${URL[nginx]}/$BIG"
ref_all_done=$CL_WALL ref_bad=$CL_BAD ref_ttfb_max=$CL_TTFB_MAX ref_first=$CL_FIRST ref_last=$CL_LAST
say "reference, the same $COLD_CLIENTS clients against nginx: clients done ${ref_first}..${ref_last} s, all done ${ref_all_done} s, TTFB max ${ref_ttfb_max} s, bad bodies $ref_bad"

# --- apt-get update of a large index -----------------------------------------------------------
# A real apt in its own root (no host keys, no lists) reads InRelease and the large
# Packages.xz through aptgate (indices cached by a warm-up update) and straight from nginx,
# taking turns; each update starts from empty lists so it downloads and parses everything.
APT_NGINX=n/a APT_AG=n/a APT_NGINX_ALL="" APT_AG_ALL=""
if [ "$APT_PACKAGES" -gt 0 ]; then
  log "apt-get update of $APT_PACKAGES packages: aptgate on :$P_AG_BIG vs nginx on :$P_NGINX_BIG, $APT_ROUNDS rounds each"
  start_aptgate "$P_AG_BIG" "$T/aptgate-big" "$P_UP_BIG" "$BIG_REPO/key.asc"
  apt_root() { # DIR URI
    mkdir -p "$1"/etc/apt/{sources.list.d,apt.conf.d,preferences.d,trusted.gpg.d,keyrings} \
      "$1"/var/lib/apt/lists/partial "$1"/var/cache/apt/archives/partial "$1"/var/lib/dpkg
    : >"$1/var/lib/dpkg/status"
    cp "$BIG_REPO/key.asc" "$1/etc/apt/keyrings/fixture.asc"
    printf 'Types: deb\nURIs: %s\nSuites: stable\nComponents: main contrib\nSigned-By: %s\n' \
      "$2" "$1/etc/apt/keyrings/fixture.asc" >"$1/etc/apt/sources.list.d/fixture.sources"
    cat >"$1/apt.conf" <<EOF
Dir "$1/";
Dir::State::status "$1/var/lib/dpkg/status";
Dir::Etc::trusted "$1/etc/apt/trusted.gpg";
Dir::Etc::trustedparts "$1/etc/apt/trusted.gpg.d/";
APT::Architecture "amd64";
APT::Architectures "amd64";
Debug::NoLocking "1";
Acquire::Languages "none";
APT::Sandbox::User "root";
EOF
  }
  apt_update() { # DIR -> seconds on stdout
    rm -rf "$1/var/lib/apt/lists" "$1/var/cache/apt/"*.bin
    mkdir -p "$1/var/lib/apt/lists/partial"
    local start; start=$(date +%s.%N)
    APT_CONFIG="$1/apt.conf" LC_ALL=C.UTF-8 http_proxy="" apt-get -qq update --error-on=any >"$1.out" 2>&1 \
      || die "apt-get update through $1 failed: $(cat "$1.out")"
    awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.3f", a - b }'
  }
  apt_root "$T/apt-aptgate" "http://127.0.0.1:$P_AG_BIG/mirror/fixture"
  apt_root "$T/apt-nginx" "http://127.0.0.1:$P_NGINX_BIG"
  # Warm-up: aptgate fetches, verifies and caches the indices.
  apt_update "$T/apt-aptgate" >/dev/null || die "apt-get update through aptgate failed: $(cat "$T/apt-aptgate.out")"
  apt_update "$T/apt-nginx" >/dev/null || die "apt-get update through nginx failed: $(cat "$T/apt-nginx.out")"
  for ((r = 0; r < APT_ROUNDS; r++)); do
    if ((r % 2)); then order=(aptgate nginx); else order=(nginx aptgate); fi
    for s in "${order[@]}"; do
      secs=$(apt_update "$T/apt-$s") || die "apt-get update through $s failed: $(cat "$T/apt-$s.out")"
      say "$(printf '%-8s %6.3f s' "$s" "$secs")"
      if [ "$s" = aptgate ]; then APT_AG_ALL+="$secs "; else APT_NGINX_ALL+="$secs "; fi
    done
  done
  median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END {
    printf "%.3f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
  APT_AG=$(echo "$APT_AG_ALL" | median)
  APT_NGINX=$(echo "$APT_NGINX_ALL" | median)
  say "median: aptgate $APT_AG s, nginx $APT_NGINX s"
fi

# --- report -------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { print (a != "n/a" && a + 0 >= b + 0) ? "met" : "**not met**" }'; }
check() { if "$@"; then echo met; else echo "**not met**"; fi; }
metric() { if [ "$2" = SMALL ]; then echo "${RPS[$1,$2]}"; else echo "${MIBS[$1,$2]}"; fi; }
ag_failed=0
for f in "${FILES[@]}"; do ag_failed=$((ag_failed + BAD[aptgate,$f])); done

{
  echo "Run: \`sudo bench/mirror.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'): wrk -t$THREADS -c$CONNS, ${ROUNDS} × ${ROUND_SECS} s per cell in alternating order, loopback, $(nproc) cores shared by wrk and the servers (1-minute load average just before the wrk runs: $LOAD_BEFORE; well above 1 means other work competed for the cores); aptgate $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')."
  echo
  echo "Cached files (the index in requests/s, the .debs in MiB/s of bodies; only 2xx responses count):"
  echo
  echo "| cached file | aptgate | nginx | apt-cacher-ng | approx | aptgate/nginx | aptgate/apt-cacher-ng | aptgate/approx |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for f in "${FILES[@]}"; do
    if [ "$f" = SMALL ]; then unit="req/s"; else unit="MiB/s"; fi
    printf '| %s (%s) | %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$f")" "$unit" \
      "$(metric aptgate "$f")" "$(metric nginx "$f")" "$(metric apt-cacher-ng "$f")" "$(metric approx "$f")" \
      "$(ratio "$(metric aptgate "$f")" "$(metric nginx "$f")")" \
      "$(ratio "$(metric aptgate "$f")" "$(metric apt-cacher-ng "$f")")" \
      "$(ratio "$(metric aptgate "$f")" "$(metric approx "$f")")"
  done
  echo
  echo "Every cell: good requests/s, MiB/s, median latency (mean of the rounds' p50), failed (non-2xx) responses:"
  echo
  echo "| server | $(label SMALL) | $(label MEDIUM) | $(label BIG) |"
  echo "|---|---|---|---|"
  for s in "${SERVERS[@]}"; do
    printf '| %s |' "$s"
    for f in "${FILES[@]}"; do
      printf ' %s req/s, %s MiB/s, p50 %s ms, %s failed |' "${RPS[$s,$f]}" "${MIBS[$s,$f]}" "${P50[$s,$f]}" "${BAD[$s,$f]}"
    done
    echo
  done
  echo
  echo "Upstream requests (each proxy has its own upstream access log):"
  echo
  echo "| proxy | second fetch after warming: index / 1 MiB / 50 MiB | during the wrk runs: index / 1 MiB / 50 MiB |"
  echo "|---|---|---|"
  for s in "${PROXIES[@]}"; do
    echo "| $s | ${SECOND[$s,SMALL]} / ${SECOND[$s,MEDIUM]} / ${SECOND[$s,BIG]} | ${DURING[$s,SMALL]} / ${DURING[$s,MEDIUM]} / ${DURING[$s,BIG]} |"
  done
  echo
  echo "Cold case: $COLD_CLIENTS clients at once ask a fresh aptgate for the uncached $(label BIG); upstream limited to $COLD_RATE/s."
  echo
  echo "| upstream requests for the file | upstream transfer | TTFB median | TTFB max | first client done | last client done | all done (wall) | clients with a bad body |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
  echo "| $cold_upstream | ${cold_upstream_secs} s | ${ttfb_median} s | ${ttfb_max} s | ${first_done} s | ${last_done} s | ${cold_all_done} s | $cold_bad |"
  echo
  echo "For reference, the same $COLD_CLIENTS clients fetching the file from nginx (on disk, no upstream): first done ${ref_first} s, last done ${ref_last} s, all done ${ref_all_done} s (TTFB max ${ref_ttfb_max} s, $ref_bad bad bodies): the fan-out of $(awk -v n="$COLD_CLIENTS" -v s="${SIZE[BIG]}" 'BEGIN { printf "%.1f", n * s / 1e9 }') GB through loopback on its own."
  echo
  echo "aptgate peak RSS (VmHWM): $AG_RSS MiB after the cached runs, $COLD_RSS MiB in the cold case."
  echo
  if [ "$APT_PACKAGES" -gt 0 ]; then
    echo "\`apt-get update\` of a $APT_PACKAGES-package index (stable, main + contrib, amd64; lists emptied before each; aptgate's cache warm), $APT_ROUNDS runs per server in alternating order:"
    echo
    echo "| server | median | runs (s) |"
    echo "|---|---:|---|"
    echo "| aptgate | $APT_AG s | $APT_AG_ALL|"
    echo "| nginx | $APT_NGINX s | $APT_NGINX_ALL|"
    echo
  fi
  echo "| target | measured | result |"
  echo "|---|---|---|"
  echo "| cached 1 MiB throughput ≥ 0.9× nginx | $(ratio "${MIBS[aptgate,MEDIUM]}" "${MIBS[nginx,MEDIUM]}")× | $(ge "$(ratio "${MIBS[aptgate,MEDIUM]}" "${MIBS[nginx,MEDIUM]}")" 0.9) |"
  echo "| cached 50 MiB throughput ≥ 0.9× nginx | $(ratio "${MIBS[aptgate,BIG]}" "${MIBS[nginx,BIG]}")× | $(ge "$(ratio "${MIBS[aptgate,BIG]}" "${MIBS[nginx,BIG]}")" 0.9) |"
  echo "| 2 KB requests/s ≥ 0.8× nginx | $(ratio "${RPS[aptgate,SMALL]}" "${RPS[nginx,SMALL]}")× | $(ge "$(ratio "${RPS[aptgate,SMALL]}" "${RPS[nginx,SMALL]}")" 0.8) |"
  for f in "${FILES[@]}"; do
    r=$(ratio "$(metric aptgate "$f")" "$(metric apt-cacher-ng "$f")")
    echo "| $(label "$f") ≥ apt-cacher-ng | ${r}× | $(ge "$r" 1.0) |"
  done
  if [ "$APT_PACKAGES" -gt 0 ]; then
    r=$(ratio "$APT_AG" "$APT_NGINX")
    echo "| apt-get update, $APT_PACKAGES packages: aptgate ≤ 1.05× nginx's time | ${r}× | $(check awk -v a="$r" 'BEGIN { exit !(a <= 1.05) }') |"
  fi
  for f in "${FILES[@]}"; do
    r=$(ratio "$(metric aptgate "$f")" "$(metric approx "$f")")
    echo "| $(label "$f") ≥ approx | ${r}× | $(ge "$r" 1.0) |"
  done
  echo "| aptgate: no failed responses in the cached runs | $ag_failed failed | $(check [ "$ag_failed" = 0 ]) |"
  echo "| cold case: exactly one upstream fetch | $cold_upstream | $(check [ "$cold_upstream" = 1 ]) |"
  echo "| cold case: streaming (max TTFB < ½ of the upstream transfer) | ${ttfb_max} s vs ${cold_upstream_secs} s | $(check awk -v a="$ttfb_max" -v b="$cold_upstream_secs" 'BEGIN { exit !(a < b / 2) }') |"
  echo "| cold case: every client got the right sha256 | $cold_bad bad | $(check [ "$cold_bad" = 0 ]) |"
  echo "| peak RSS < 100 MB | $AG_RSS / $COLD_RSS MiB | $(check [ "$(( AG_RSS > COLD_RSS ? AG_RSS : COLD_RSS ))" -lt 95 ]) |"
} >"$T/results.md"

log "results"
cat "$T/results.md"
README=$ROOT/bench/README.md
if [ "$WRITE_README" = 1 ]; then
  if grep -q '<!-- RESULTS -->' "$README" 2>/dev/null && grep -q '<!-- /RESULTS -->' "$README"; then
    awk -v f="$T/results.md" '
      /<!-- RESULTS -->/ { print; while ((getline l < f) > 0) print l; skip = 1; next }
      /<!-- \/RESULTS -->/ { skip = 0 }
      !skip' "$README" >"$T/readme.new"
  else
    { [ -f "$README" ] && cat "$README"; printf '\n## Results\n\n<!-- RESULTS -->\n'; cat "$T/results.md"
      printf '<!-- /RESULTS -->\n'; } >"$T/readme.new"
  fi
  cat "$T/readme.new" >"$README"
  log "wrote the results into bench/README.md"
fi
