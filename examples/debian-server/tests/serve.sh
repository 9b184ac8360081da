#!/bin/bash
# Runs INSIDE a fresh instance of the final image, in its own network namespace (tests
# have no network: only the instance's loopback). Starts nginx and fetches the site.
# The image has neither curl nor wget, and installing them only for this test would
# change the image under test, so the request is bash's own /dev/tcp.
set -eu
nginx
trap 'nginx -s stop 2>/dev/null || true' EXIT
get() {
  for _ in $(seq 50); do
    if exec 3<>/dev/tcp/127.0.0.1/80; then
      printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
      cat <&3
      exec 3<&-
      return 0
    fi 2>/dev/null
    sleep 0.1
  done
  echo "nginx never listened on 127.0.0.1:80" >&2
  return 1
}
page=$(get /)
echo "$page" | head -n 1
echo "$page" | grep -q '^HTTP/1.1 200' || { echo "GET / did not answer 200" >&2; exit 1; }
echo "$page" | grep -q 'Served by nginx from an imgraph-built Debian image' \
  || { echo "GET / did not serve the site" >&2; exit 1; }
get /healthz | tail -n 1 | grep -qx ok || { echo "GET /healthz did not answer ok" >&2; exit 1; }
echo "nginx $(nginx -v 2>&1 | sed 's#.*/##') served the site on 127.0.0.1:80"
