#!/usr/bin/env bash
# The full test suite: installs what the tests need on a fresh machine, then runs them.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh config     # extra args go to `cargo test`
#   MOTO_KEEP=1 bash scripts/test.sh   # leave the moto server it starts running
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v packer >/dev/null 2>&1 || need_apt+=(packer)   # tests/aws_cli.rs, tests/aws_provider.rs: Packer 1.6.6
[ -x /usr/bin/chromium ] || need_apt+=(chromium)          # tests/report.rs: headless Chromium
command -v groff >/dev/null 2>&1 || need_apt+=(groff-base) # tests/cli_operator.rs renders `imgraph man`
# tests/debian_server.rs: a real Debian root from debootstrap, packed with zstd.
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "test.sh: missing ${need_apt[*]} (run as root, or install them): tests that need them fail in CI" >&2
  fi
fi
# tests/debian_server.rs: the example's origin, made once by debootstrap and cached under
# the target directory (about two minutes the first time, nothing afterwards).
if [ "$(id -u)" -eq 0 ]; then
  sh examples/debian-server/make-origin.sh --cache-only >/dev/null \
    || echo "test.sh: no Debian origin: tests/debian_server.rs and the apt test in tests/sandbox.rs fail" >&2
else
  echo "test.sh: not root: examples/debian-server/make-origin.sh (debootstrap) cannot run" >&2
fi
# tests/aws_*.rs: an EC2-compatible server (moto) on loopback; installs moto[server] if missing.
# A server this run starts is stopped when it ends (MOTO_KEEP=1 keeps it); one that was
# already answering is left alone.
moto_pid_file="${MOTO_PID_FILE:-/tmp/imgraph-moto-${MOTO_PORT:-5055}.pid}"
pid_before="$(cat "$moto_pid_file" 2>/dev/null || true)"
bash scripts/moto.sh
pid_after="$(cat "$moto_pid_file" 2>/dev/null || true)"
if [ -n "$pid_after" ] && [ "$pid_after" != "$pid_before" ] && [ "${MOTO_KEEP:-0}" != 1 ]; then
  trap 'bash scripts/moto.sh stop' EXIT
fi
export IMGRAPH_TEST_EC2_ENDPOINT="${IMGRAPH_TEST_EC2_ENDPOINT:-http://127.0.0.1:${MOTO_PORT:-5055}}"

cargo build --quiet --all-targets
cargo test --all-targets "$@"
# Fuzzing (RELIABILITY.md): in CI each target runs for 60 s after the tests; its
# instrumented build lives in the target folder's fuzz/, apart from the main crate's.
if [ "${CI:-}" = "true" ] || [ -n "${FUZZ_SECONDS:-}" ]; then
  bash scripts/fuzz.sh
fi
