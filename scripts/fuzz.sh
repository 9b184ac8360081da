#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for a bounded time (FUZZ_SECONDS, 60 by default;
# 0 builds the targets and runs none),
# starting from the committed seeds in fuzz/seeds/TARGET plus what earlier runs found,
# with the dictionary fuzz/dicts/TARGET.dict.
#   bash scripts/fuzz.sh            # every target
#   bash scripts/fuzz.sh unpack     # one target
#
# Works on the stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer,
# -Cpasses=sancov-module), which stable rustc accepts under RUSTC_BOOTSTRAP=1.
# FUZZ_SANITIZER=none builds without AddressSanitizer (address by default).
# Everything it builds lives under the target folder ($CARGO_TARGET_DIR, else target/):
# fuzz/ (the instrumented build, the growing corpus and the unpack target's work folder)
# and tools/ (cargo-fuzz itself, installed there when it is not on PATH), so a CI cache of
# the target folder keeps them. It prints how long the install, the build and each run took.
# A crash exits 1 naming the input (fuzz/artifacts/TARGET/). When cargo-fuzz cannot be
# installed or the targets cannot be built, it exits 1 under CI=true, else says NOT RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export RUSTC_BOOTSTRAP=1
target_root="${CARGO_TARGET_DIR:-$root/target}"
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config unpack)

not_run() {
  if [ "${CI:-}" = "true" ]; then
    echo "fuzz.sh: $1" >&2
    exit 1
  fi
  echo "fuzz.sh: NOT RUN: $1" >&2
  exit 0
}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  tools="$target_root/tools"
  if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "fuzz.sh: installing cargo-fuzz into $tools (a few minutes, once)"
    SECONDS=0
    CARGO_TARGET_DIR="$tools/build" cargo install --locked --root "$tools" cargo-fuzz ||
      not_run "cargo install --locked cargo-fuzz failed"
    rm -rf "$tools/build"
    echo "fuzz.sh: installed cargo-fuzz in ${SECONDS}s"
  fi
  export PATH="$tools/bin:$PATH"
fi

# Its own target folder: instrumented builds share nothing with the normal one.
export CARGO_TARGET_DIR="$target_root/fuzz"
build=(--fuzz-dir fuzz -O --codegen-units 16 --sanitizer "$sanitizer")
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "fuzz.sh: building ${targets[*]} (sanitizer $sanitizer)"
SECONDS=0
for t in "${targets[@]}"; do
  if ! cargo fuzz build "${build[@]}" "$t" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    not_run "building fuzz target $t failed"
  fi
done
echo "fuzz.sh: built in ${SECONDS}s"
# libFuzzer reads -max_total_time=0 as "no limit": 0 here means build only.
if [ "$seconds" = 0 ]; then
  echo "fuzz.sh: FUZZ_SECONDS=0: built, not run"
  exit 0
fi
for t in "${targets[@]}"; do
  corpus="$CARGO_TARGET_DIR/corpus/$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t" "$CARGO_TARGET_DIR/dicts"
  # The unpack target works in this folder; its path joins the dictionary so absolute
  # symlink targets in the archives can aim at what the target watches.
  export IMGRAPH_FUZZ_WORK="$CARGO_TARGET_DIR/work/$t"
  dict="$CARGO_TARGET_DIR/dicts/$t.dict"
  cp "fuzz/dicts/$t.dict" "$dict"
  [ "$t" != unpack ] || printf 'work="%s"\nwork_outside="%s/outside"\n' "$IMGRAPH_FUZZ_WORK" "$IMGRAPH_FUZZ_WORK" >>"$dict"
  echo "fuzz.sh: $t for ${seconds}s"
  SECONDS=0
  if ! cargo fuzz run "${build[@]}" "$t" "$corpus" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
    -dict="$dict" -artifact_prefix="$root/fuzz/artifacts/$t/" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz.sh: $t found a crash: the input is in fuzz/artifacts/$t/;" \
      "reproduce with: cargo fuzz run --fuzz-dir fuzz $t fuzz/artifacts/$t/FILE" >&2
    exit 1
  fi
  # libFuzzer ends with "Done N runs in S second(s)": the executions of this target.
  echo "fuzz.sh: $t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -n 1)," \
    "corpus $(find "$corpus" -type f | wc -l) inputs, ${SECONDS}s with startup"
done
