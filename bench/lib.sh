# Shared by the bench scripts (sourced, not run): ports, readiness, and nginx serving a
# directory. The caller sets WORK (a temp dir) and PIDS (an array of processes to stop).

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

# start_nginx DIR PORT: nginx serves DIR on 127.0.0.1:PORT (no access log, keep-alive without
# limit); its pid is added to PIDS and left in NGINX_PID.
start_nginx() {
  local dir=$1 port=$2
  mkdir -p "$WORK/nginx-tmp"
  cat >"$WORK/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx-tmp;
  types { application/octet-stream deb; }
  default_type application/octet-stream;
  server { listen 127.0.0.1:$port; root $dir; access_log off; }
}
CONF
  nginx -p "$WORK" -e "$WORK/nginx.err" -c "$WORK/nginx.conf" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
}
