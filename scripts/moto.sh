#!/usr/bin/env bash
# An EC2-compatible server (moto) on loopback for the AWS integration tests.
#   scripts/moto.sh          # install moto[server] if missing, start it, wait until it answers
#   scripts/moto.sh stop     # stop the server this script started
# MOTO_PORT (default 5055) picks the port; the pid goes to ${MOTO_PID_FILE:-/tmp/imgraph-moto-$PORT.pid}
# and the server's output to ${MOTO_LOG:-/tmp/imgraph-moto-$PORT.log}.
set -euo pipefail

port="${MOTO_PORT:-5055}"
pid_file="${MOTO_PID_FILE:-/tmp/imgraph-moto-$port.pid}"
log_file="${MOTO_LOG:-/tmp/imgraph-moto-$port.log}"
url="http://127.0.0.1:$port"

answers() {
  # Any HTTP answer (moto returns 404 on `/`) means the server is up.
  python3 - "$url" <<'EOF' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2)
except urllib.error.HTTPError:
    pass
EOF
}

stop() {
  if [ -f "$pid_file" ]; then
    pid="$(cat "$pid_file")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
    rm -f "$pid_file"
    echo "moto.sh: stopped moto on $url"
  else
    echo "moto.sh: no pid file at $pid_file; nothing to stop"
  fi
}

if [ "${1:-start}" = "stop" ]; then
  stop
  exit 0
fi

if answers; then
  echo "moto.sh: a server already answers on $url"
  exit 0
fi

if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  echo "moto.sh: installing moto[server] from PyPI"
  python3 -m pip install --quiet 'moto[server]'
  hash -r
fi

# setsid: the server outlives this script and is not killed with the caller's process group.
setsid moto_server -H 127.0.0.1 -p "$port" >"$log_file" 2>&1 < /dev/null &
echo $! >"$pid_file"

for _ in $(seq 1 150); do
  if answers; then
    echo "moto.sh: moto answers on $url (pid $(cat "$pid_file"), log $log_file)"
    exit 0
  fi
  if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "moto.sh: moto_server exited; its log:" >&2
    cat "$log_file" >&2
    exit 1
  fi
  sleep 0.2
done
echo "moto.sh: moto did not answer on $url within 30 s; its log:" >&2
cat "$log_file" >&2
exit 1
