#!/usr/bin/env bash
# Publish and fetch of real artifacts through a shared store (`provider "local" { store {
# s3 … } }`) against an S3 server (moto: `bash scripts/moto.sh`), with the real binary:
# runner A applies (its build publishes), runner B (A's state file, an empty store, a
# changed test) applies (its test fetches). The times are the ones imgraph writes in the
# node logs (`published … in Xs`, `fetched … in Xs, verified`), RUNS times each, each run
# with a fresh bucket.
#
#   IMGRAPH=target/debug/imgraph bash benches/shared-artifacts.sh              # quickstart + debian
#   ROWS=quickstart RUNS=3 ENDPOINT=http://127.0.0.1:5055 bash benches/shared-artifacts.sh
#
# Rows: quickstart (its `base` image, a few hundred bytes) and debian (a Debian bookworm
# minbase root file system, made by examples/debian-server/make-origin.sh, ~30 MB packed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS="${RUNS:-3}"
ROWS="${ROWS:-quickstart debian}"
ENDPOINT="${ENDPOINT:-http://127.0.0.1:5055}"
IMGRAPH="${IMGRAPH:-$ROOT/target/debug/imgraph}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export NO_COLOR=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Writes a project for ROW into $1.
project() {
  local row=$1 dir=$2
  case "$row" in
    quickstart)
      git -C "$ROOT" archive HEAD examples/quickstart | tar -x -C "$work"
      mv "$work/examples/quickstart" "$dir" && rm -rf "$work/examples"
      ;;
    debian)
      local origin
      origin="$(sh "$ROOT/examples/debian-server/make-origin.sh" --cache-only 2>/dev/null | tail -n 1)"
      mkdir -p "$dir/bases" "$dir/scripts" "$dir/tests/base"
      cp "$origin" "$dir/bases/debian.tar.zst"
      cat >"$dir/imgraph.kdl" <<'EOF'
imgraph version=1
provider "local" {
    store ".imgraph/images"
    sandbox "none"
}
source "debian" { local "bases/debian.tar.zst"; }
image "base" {
    from "debian"
    build "rootfs" { run "sh scripts/provision.sh"; }
    test "smoke" { run "sh tests/base/smoke.sh"; }
}
EOF
      echo 'echo bench > "$IMGRAPH_ROOT/etc/bench"' >"$dir/scripts/provision.sh"
      echo 'test -f "$IMGRAPH_INSTANCE_ROOT/etc/bench"' >"$dir/tests/base/smoke.sh"
      ;;
  esac
}

# The seconds of the log line of NODE in DIR's run RUN that starts with WHAT.
seconds() {
  grep -h "^imgraph: $3 " "$1/.imgraph/logs/run-$2/$4.log" | sed -E 's/.* in ([0-9.]+)s.*/\1/'
}

# The whole build:base node of run 1 in DIR (unpack, steps, pack, publish), in seconds.
build_seconds() {
  "$IMGRAPH" -C "$1" history --json | python3 -c 'import json,sys
for r in json.load(sys.stdin)["runs"]:
    for n in r["nodes"]:
        if r["id"] == 1 and n["id"] == "build:base":
            print("%.2f" % ((n["finished_at_ms"] - n["started_at_ms"]) / 1000))'
}

printf '| row | artifact bytes | whole build (s) | publish (s) | fetch (s) |\n|---|---|---|---|---|\n'
for row in $ROWS; do
  for n in $(seq 1 "$RUNS"); do
    bucket="imgraph-bench-$row-$n-$$"
    curl -fsS -X PUT "$ENDPOINT/$bucket" >/dev/null
    a="$work/$row-$n-a" b="$work/$row-$n-b"
    project "$row" "$a"
    sed -i "s|store \".imgraph/images\"|store \".imgraph/images\" { s3 bucket=\"$bucket\" prefix=\"images/\" region=\"us-east-1\" endpoint=\"$ENDPOINT\"; }|" "$a/imgraph.kdl"
    "$IMGRAPH" -C "$a" apply -q --target base >/dev/null
    mkdir -p "$b/.imgraph"
    (cd "$a" && tar -c --exclude=.imgraph .) | tar -x -C "$b"
    cp "$a/.imgraph/state.db" "$b/.imgraph/"
    echo "# runner b" >>"$b/tests/base/smoke.sh"
    "$IMGRAPH" -C "$b" apply -q --target base >/dev/null
    bytes="$(grep -h '^imgraph: published ' "$a/.imgraph/logs/run-1/build_base.log" | sed -E 's/.*\(([0-9]+) bytes\).*/\1/')"
    printf '| %s | %s | %s | %s | %s |\n' "$row" "$bytes" "$(build_seconds "$a")" \
      "$(seconds "$a" 1 published build_base)" "$(seconds "$b" 2 fetched test_base_smoke)"
    rm -rf "$a" "$b"
  done
done
