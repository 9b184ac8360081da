#!/usr/bin/env bash
# What `state { s3 … }` adds to a whole apply: the quickstart applied from a fresh copy,
# with the local state file alone and with the shared state on the S3 test server (moto on
# loopback), the two alternating, RUNS times each; medians of wall time, the journal
# objects one apply writes, and the requests it sends (from the server's access log).
#
#   bash benches/shared_state.sh                      # needs moto: bash scripts/moto.sh
#   RUNS=9 IMGRAPH=path/to/imgraph bash benches/shared_state.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS="${RUNS:-5}"
ENDPOINT="${IMGRAPH_TEST_EC2_ENDPOINT:-http://127.0.0.1:5055}"
MOTO_LOG="${MOTO_LOG:-/tmp/imgraph-moto-5055.log}"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
if [ -z "${IMGRAPH:-}" ]; then
  cargo build --quiet
  IMGRAPH="${CARGO_TARGET_DIR:-$ROOT/target}/debug/imgraph"
fi
curl -fsS -o /dev/null "$ENDPOINT/" || { echo "shared_state.sh: no S3 server at $ENDPOINT" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

copy() { # a fresh copy of the quickstart as committed
  mkdir -p "$work/$1" && git archive HEAD examples/quickstart | tar -x -C "$work/$1"
  echo "$work/$1/examples/quickstart"
}
ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

: > "$work/local.ms"; : > "$work/s3.ms"; : > "$work/objects"; : > "$work/requests"
for i in $(seq 1 "$RUNS"); do
  dir="$(copy "local-$i")"
  t0=$(ms); "$IMGRAPH" -C "$dir" apply -q >/dev/null; t1=$(ms)
  echo $((t1 - t0)) >> "$work/local.ms"

  bucket="imgraph-bench-$$-$i"
  curl -fsS -o /dev/null -X PUT "$ENDPOINT/$bucket"
  dir="$(copy "s3-$i")"
  printf '\nstate {\n    s3 bucket="%s" prefix="platform/" region="us-east-1" endpoint="%s"\n}\n' \
    "$bucket" "$ENDPOINT" >> "$dir/imgraph.kdl"
  before=$(grep -c "/$bucket" "$MOTO_LOG" || true)
  t0=$(ms); "$IMGRAPH" -C "$dir" apply -q >/dev/null; t1=$(ms)
  echo $((t1 - t0)) >> "$work/s3.ms"
  grep "/$bucket" "$MOTO_LOG" | tail -n +$((before + 1)) \
    | awk '{print $6}' | tr -d '"' | sort | uniq -c | tr '\n' ' ' >> "$work/requests"
  echo >> "$work/requests"
  curl -fsS "$ENDPOINT/$bucket?list-type=2&prefix=platform/journal/" \
    | grep -o '<Key>' | wc -l >> "$work/objects"
done

local_ms=$(median < "$work/local.ms")
s3_ms=$(median < "$work/s3.ms")
objects=$(median < "$work/objects")
echo "apply of the quickstart, medians of $RUNS (ms): local $local_ms, shared on S3 $s3_ms"
echo "  local runs: $(tr '\n' ' ' < "$work/local.ms")"
echo "  s3 runs:    $(tr '\n' ' ' < "$work/s3.ms")"
echo "journal objects written per apply: $objects"
echo "requests per apply (method counts, each run):"
sed 's/^/  /' "$work/requests"
awk -v l="$local_ms" -v s="$s3_ms" -v o="$objects" 'BEGIN {
  printf "added per apply: %.0f ms; per journal append (all of it spread over the appends): %.1f ms\n", s - l, (s - l) / o }'
