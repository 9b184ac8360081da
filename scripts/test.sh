#!/usr/bin/env bash
# The full test suite: installs what the tests need on a fresh machine, then runs them.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh config     # extra args go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "test.sh: missing ${need_apt[*]} (run as root, or install them): tests that need them fail in CI" >&2
  fi
fi

cargo build --quiet --all-targets
cargo test --all-targets "$@"
