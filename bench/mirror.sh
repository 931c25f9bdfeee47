#!/usr/bin/env bash
# Benchmark: aptgate's pull-through mirror against nginx (files from disk), apt-cacher-ng and
# approx (proxying the same fixture upstream), all on 127.0.0.1. Prints a markdown table and
# writes it into bench/README.md between the RESULTS markers.
#
#   bench/mirror.sh            # full run (~4 minutes on 2 cores)
#   DURATION=3 bench/mirror.sh # shorter wrk runs
#
# Needs root for approx (it runs as user approx and reads /etc/approx/approx.conf, which is
# backed up and restored). Installs nginx-light, wrk, apt-cacher-ng, approx, socat if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-8}
CONNS=${CONNS:-16}
COLD_CLIENTS=${COLD_CLIENTS:-50}
COLD_RATE=${COLD_RATE:-25m}   # upstream rate for the cold case (nginx limit_rate)

log() { printf '\n== %s\n' "$*" >&2; }

need=()
for pkg in nginx:nginx-light wrk:wrk apt-cacher-ng:apt-cacher-ng approx:approx socat:socat; do
  command -v "${pkg%%:*}" >/dev/null || need+=("${pkg#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

T=$(mktemp -d /tmp/aptgate-bench.XXXXXX)
chmod 755 "$T"
PIDS=()
APPROX_CONF=/etc/approx/approx.conf
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$T/nginx.pid" ] && kill "$(cat "$T/nginx.pid")" 2>/dev/null || true
  [ -f "$T/approx.conf.orig" ] && cp "$T/approx.conf.orig" "$APPROX_CONF"
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

wait_http() { # URL: poll until it answers
  for _ in $(seq 1 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}

log "building release binaries"
cargo build --release --locked -p aptgate -p aptgate-tests >&2
BIN=$ROOT/target/release

log "generating the fixture (50 MiB and 1 MiB .debs)"
"$BIN/aptgate-fixture" generate "$T/repo" --large-mib 50 --medium-kib 1024 > "$T/packages.tsv"
BIG=$(awk -F'\t' '$1=="big-data"{print $6; exit}' "$T/packages.tsv")
MEDIUM=$(awk -F'\t' '$1=="medium-data"{print $6; exit}' "$T/packages.tsv")
BIG_SHA=$(awk -F'\t' '$1=="big-data"{print $5; exit}' "$T/packages.tsv")
# The index closest to 2 KB.
SMALL=$(cd "$T/repo" && find dists/stable -type f -not -path '*by-hash*' -printf '%s %p\n' \
  | awk '{d=$1-2048; if (d<0) d=-d; print d, $1, $2}' | sort -n | head -1 | awk '{print $3}')
size_of() { stat -c %s "$T/repo/$1"; }
log "files: $SMALL ($(size_of "$SMALL") B), $MEDIUM ($(size_of "$MEDIUM") B), $BIG ($(size_of "$BIG") B)"

P_NGINX=18081 P_UP=18082 P_SLOW=18083 P_AG=18470 P_AG_COLD=18471 P_ACNG=13142 P_APPROX=19999
log "nginx: competitor on :$P_NGINX, counting upstream on :$P_UP, rate-limited upstream on :$P_SLOW"
cat > "$T/nginx.conf" <<EOF
worker_processes auto;
pid $T/nginx.pid;
error_log $T/nginx.err;
events { worker_connections 4096; }
http {
  sendfile on; tcp_nopush on; keepalive_requests 100000;
  types { application/octet-stream deb; }
  server { listen 127.0.0.1:$P_NGINX; root $T/repo; access_log off; }
  server { listen 127.0.0.1:$P_UP; root $T/repo; access_log $T/upstream.log; }
  server { listen 127.0.0.1:$P_SLOW; root $T/repo; access_log $T/slow.log; limit_rate $COLD_RATE; }
}
EOF
nginx -c "$T/nginx.conf"
wait_http "http://127.0.0.1:$P_UP/dists/stable/InRelease"

start_aptgate() { # PORT DATA UPSTREAM_PORT
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
keyring = ["$T/repo/key.asc"]
EOF
  APTGATE_LOG=warn "$BIN/aptgate" --config "$T/aptgate-$1.toml" serve >"$T/aptgate-$1.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
log "aptgate on :$P_AG"
start_aptgate $P_AG "$T/aptgate-data" $P_UP
AG_PID=$LAST_PID
wait_http "http://127.0.0.1:$P_AG/healthz"

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
Remap-fixture: /fixture ; http://127.0.0.1:$P_UP/
AllowUserPorts: 80 $P_UP
EOF
apt-cacher-ng -c "$T/acng-conf" ForeGround=1 >"$T/acng.out" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_ACNG/fixture/dists/stable/InRelease"

log "approx on :$P_APPROX (inetd-style, behind systemd-socket-activate)"
cp "$APPROX_CONF" "$T/approx.conf.orig"
mkdir -p "$T/approx-cache" && chown approx:approx "$T/approx-cache"
printf 'fixture http://127.0.0.1:%s\n$cache %s\n' "$P_UP" "$T/approx-cache" > "$APPROX_CONF"
if [ ! -e /dev/log ]; then  # approx exits when it cannot reach syslog
  socat -u UNIX-RECV:/dev/log,mode=666 OPEN:/dev/null >/dev/null 2>&1 &
  PIDS+=($!)
fi
systemd-socket-activate --inetd -a -l "127.0.0.1:$P_APPROX" \
  setpriv --reuid=approx --regid=approx --init-groups /usr/sbin/approx >"$T/approx.out" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$P_APPROX/fixture/dists/stable/InRelease"

declare -A URL=(
  [aptgate]="http://127.0.0.1:$P_AG/mirror/fixture"
  [nginx]="http://127.0.0.1:$P_NGINX"
  [apt-cacher-ng]="http://127.0.0.1:$P_ACNG/fixture"
  [approx]="http://127.0.0.1:$P_APPROX/fixture"
)
SERVERS=(aptgate nginx apt-cacher-ng approx)

log "warming every cache (aptgate needs the verified indices first)"
for s in "${SERVERS[@]}"; do
  for f in dists/stable/InRelease dists/stable/main/binary-amd64/Packages.xz "$SMALL" "$MEDIUM" "$BIG"; do
    curl -sf -o /dev/null "${URL[$s]}/$f" || { echo "warming $s $f failed" >&2; exit 1; }
  done
done
upstream_hits() { grep -c " /$1 " "$T/upstream.log" || true; }
before_small=$(upstream_hits "$SMALL"); before_medium=$(upstream_hits "$MEDIUM"); before_big=$(upstream_hits "$BIG")

# wrk's Transfer/sec in MB/s, and Requests/sec.
run_wrk() { # URL -> "req/s MB/s"
  wrk -t2 -c"$CONNS" -d"${DURATION}s" "$1" 2>&1 | awk '
    /Requests\/sec/ {r=$2}
    /Transfer\/sec/ {v=$2; u=substr(v, length(v)-1); n=substr(v, 1, length(v)-2);
      if (u=="GB") n*=1024; else if (u=="KB") n/=1024; else if (u!="MB") n=substr(v,1,length(v)-1)/1048576; t=n}
    END {printf "%.0f %.1f\n", r, t}'
}

declare -A RPS MBS
for f in SMALL MEDIUM BIG; do
  for s in "${SERVERS[@]}"; do
    log "wrk -t2 -c$CONNS -d${DURATION}s: $s, $f"
    read -r rps mbs < <(run_wrk "${URL[$s]}/${!f}")
    RPS[$s,$f]=$rps; MBS[$s,$f]=$mbs
    echo "$rps req/s, $mbs MB/s" >&2
  done
done
proxy_upstream_small=$(( $(upstream_hits "$SMALL") - before_small ))
proxy_upstream_medium=$(( $(upstream_hits "$MEDIUM") - before_medium ))
proxy_upstream_big=$(( $(upstream_hits "$BIG") - before_big ))
AG_RSS=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$AG_PID/status")

log "cold case: $COLD_CLIENTS clients, one uncached $(size_of "$BIG") B file, upstream limited to $COLD_RATE/s"
start_aptgate $P_AG_COLD "$T/aptgate-cold" $P_SLOW
COLD_PID=$LAST_PID
wait_http "http://127.0.0.1:$P_AG_COLD/healthz"
COLD_URL="http://127.0.0.1:$P_AG_COLD/mirror/fixture"
curl -sf -o /dev/null "$COLD_URL/dists/stable/InRelease"
curl -sf -o /dev/null "$COLD_URL/dists/stable/main/binary-amd64/Packages.xz"
mkdir -p "$T/cold"
cold_start=$(date +%s.%N)
for i in $(seq 1 "$COLD_CLIENTS"); do
  curl -sf -o "$T/cold/$i.deb" -w '%{time_starttransfer} %{time_total}\n' "$COLD_URL/$BIG" > "$T/cold/$i.time" &
done
wait_cold=0
while [ "$(find "$T/cold" -name '*.time' -size +0 | wc -l)" -lt "$COLD_CLIENTS" ]; do
  sleep 0.2; wait_cold=$((wait_cold + 1)); [ $wait_cold -lt 600 ] || { echo "cold clients hung" >&2; exit 1; }
done
cold_all_done=$(awk -v a="$(date +%s.%N)" -v b="$cold_start" 'BEGIN { printf "%.3f", a - b }')
cold_upstream=$(grep -c " /$BIG " "$T/slow.log" || true)
cold_bad=0
for i in $(seq 1 "$COLD_CLIENTS"); do
  [ "$(sha256sum < "$T/cold/$i.deb" | cut -d' ' -f1)" = "$BIG_SHA" ] || cold_bad=$((cold_bad + 1))
done
read -r ttfb_median ttfb_max first_done < <(cat "$T"/cold/*.time | sort -n | awk '
  {t[NR]=$1; if (NR==1 || $2<d) d=$2} END {
    printf "%.3f %.3f %.3f\n", t[int((NR+1)/2)], t[NR], d }')
COLD_RSS=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$COLD_PID/status")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
met() { awk -v a="$1" -v b="$2" 'BEGIN { print (a >= b) ? "met" : "**not met**" }'; }
label() { case $1 in SMALL) echo "$(size_of "$SMALL") B index";; MEDIUM) echo "1 MiB .deb";; BIG) echo "50 MiB .deb";; esac; }

{
  echo "Run: \`bench/mirror.sh\` (wrk -t2 -c$CONNS -d${DURATION}s per cell, loopback, 2 cores shared by client and server), $(date -u +%Y-%m-%d)."
  echo
  echo "| cached file | aptgate | nginx | apt-cacher-ng | approx | aptgate/nginx | aptgate/acng | aptgate/approx |"
  echo "|---|---|---|---|---|---|---|---|"
  for f in SMALL MEDIUM BIG; do
    if [ $f = SMALL ]; then key=RPS; unit="req/s"; else key=MBS; unit="MB/s"; fi
    declare -n V=$key
    printf '| %s (%s) | %s | %s | %s | %s | %s | %s | %s |\n' "$(label $f)" "$unit" \
      "${V[aptgate,$f]}" "${V[nginx,$f]}" "${V[apt-cacher-ng,$f]}" "${V[approx,$f]}" \
      "$(ratio "${V[aptgate,$f]}" "${V[nginx,$f]}")" "$(ratio "${V[aptgate,$f]}" "${V[apt-cacher-ng,$f]}")" \
      "$(ratio "${V[aptgate,$f]}" "${V[approx,$f]}")"
  done
  echo
  echo "Requests/s for the larger files: aptgate ${RPS[aptgate,MEDIUM]} / ${RPS[aptgate,BIG]}, nginx ${RPS[nginx,MEDIUM]} / ${RPS[nginx,BIG]}, apt-cacher-ng ${RPS[apt-cacher-ng,MEDIUM]} / ${RPS[apt-cacher-ng,BIG]}, approx ${RPS[approx,MEDIUM]} / ${RPS[approx,BIG]}."
  echo "Upstream requests during the cached runs (all proxies together): small $proxy_upstream_small, 1 MiB $proxy_upstream_medium, 50 MiB $proxy_upstream_big."
  echo
  echo "Cold case ($COLD_CLIENTS clients at once, uncached 50 MiB, upstream at $COLD_RATE/s): upstream requests for the file: **$cold_upstream**; time to first byte median ${ttfb_median} s, max ${ttfb_max} s; first client done ${first_done} s; all done ${cold_all_done} s; clients with a wrong sha256: $cold_bad."
  echo
  echo "Peak RSS (VmHWM): aptgate ${AG_RSS} MB after the cached runs, ${COLD_RSS} MB in the cold case."
  echo
  echo "| target | result |"
  echo "|---|---|"
  echo "| cached 1 MiB throughput ≥ 0.9× nginx | $(met "$(ratio "${MBS[aptgate,MEDIUM]}" "${MBS[nginx,MEDIUM]}")" 0.9) |"
  echo "| cached 50 MiB throughput ≥ 0.9× nginx | $(met "$(ratio "${MBS[aptgate,BIG]}" "${MBS[nginx,BIG]}")" 0.9) |"
  echo "| 2 KB requests/s ≥ 0.5× nginx | $(met "$(ratio "${RPS[aptgate,SMALL]}" "${RPS[nginx,SMALL]}")" 0.5) |"
  for f in SMALL MEDIUM BIG; do
    if [ $f = SMALL ]; then declare -n W=RPS; else declare -n W=MBS; fi
    echo "| $(label $f) ≥ 1.5× apt-cacher-ng | $(met "$(ratio "${W[aptgate,$f]}" "${W[apt-cacher-ng,$f]}")" 1.5) |"
    echo "| $(label $f) ≥ approx | $(met "$(ratio "${W[aptgate,$f]}" "${W[approx,$f]}")" 1.0) |"
  done
  echo "| cold case: exactly one upstream fetch | $([ "$cold_upstream" = 1 ] && echo met || echo '**not met**') |"
  echo "| cold case: streaming (max TTFB < first client done) | $(awk -v a="$ttfb_max" -v b="$first_done" 'BEGIN{print (a<b)?"met":"**not met**"}') |"
  echo "| peak RSS < 100 MB | $([ "$AG_RSS" -lt 100 ] && [ "$COLD_RSS" -lt 100 ] && echo met || echo '**not met**') |"
} > "$T/results.md"

cat "$T/results.md"
README=$ROOT/bench/README.md
if grep -q '<!-- RESULTS -->' "$README" 2>/dev/null; then
  awk -v f="$T/results.md" '
    /<!-- RESULTS -->/ {print; while ((getline l < f) > 0) print l; skip=1; next}
    /<!-- \/RESULTS -->/ {skip=0}
    !skip' "$README" > "$T/readme.new" && cp "$T/readme.new" "$README"
fi
