#!/usr/bin/env bash
# Side-by-side comparison of imgraph's own overhead with the physical limit of the machine
# (b3sum, git, tar, zstd), each pair measured in one run so the ratio holds while the
# machine's speed drifts. Generates its own data sets (deterministic, seeded).
#
#   bash benches/compare.sh                  # every row, 5 runs each
#   RUNS=3 ROWS="cold warm" bash benches/compare.sh
#   IMGRAPH=path/to/imgraph bash benches/compare.sh
#
# Rows: cold warm cold100k warm100k noop first first-tmpfs sched image. `first-tmpfs` is
# `first` in a copy of its project on a tmpfs (TMPFS, default /dev/shm): file creation
# there costs the kernel next to nothing, so what remains is imgraph's own overhead; the
# difference to `first` is the file system's (on a journal-less ext4, the inode allocator
# scans recently deleted inodes on every create). Prints one table (medians of RUNS
# whole-process runs, wall and CPU seconds, peak RSS) and writes it to $OUT/compare.md.
# Data lives in $OUT (default target/compare), reused between runs of the script.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS="${RUNS:-5}"
ROWS="${ROWS:-cold warm cold100k warm100k noop first first-tmpfs sched image}"
OUT="${OUT:-$ROOT/target/compare}"
JOBS="${JOBS:-8}"

need=()
command -v b3sum >/dev/null || need+=(b3sum)
command -v zstd >/dev/null || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "compare.sh: install ${need[*]} first" >&2; exit 1
  fi
fi

if [ -z "${IMGRAPH:-}" ]; then
  echo "compare.sh: building imgraph (release, local provider only)" >&2
  cargo build --quiet --release --no-default-features
  IMGRAPH="${CARGO_TARGET_DIR:-$ROOT/target}/release/imgraph"
fi
IMGRAPH="$(realpath "$IMGRAPH")"
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"
: > "$RESULTS"

# timed ROW NAME "CMD" [NAME_B "CMD B"]: WARMUP (default 3) warm-up runs of each (they fill the page
# cache), then RUNS runs of each, alternating, one line per run into $RESULTS: row name
# wall user sys maxrss_kb. One Python process times them all (wall with perf_counter, CPU
# and peak RSS from wait4 of each run, in microseconds): /usr/bin/time gives
# 10 ms steps, coarse for rows of 30-70 ms, and a timer process started anew before each
# run left the caches cold for the run it timed. Dirty pages the set-up left (a first
# apply's state and stat cache) are written out first: their writeback otherwise runs
# beside the first half minute of runs.
timed() {
  sync
  python3 - "$RESULTS" "$RUNS" "$@" <<'PY'
import os, subprocess, sys, time
results, runs, row, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
commands = list(zip(pairs[0::2], pairs[1::2]))
WARMUP = int(os.environ.get("WARMUP", "3"))
def run(name, command):
    start = time.perf_counter()
    child = subprocess.Popen(["bash", "-c", command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wait4: this child's own CPU and peak RSS (its descendants' included).
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.stderr.write(f"compare.sh: {name} failed: {command}\n")
        subprocess.run(["bash", "-c", command], stdout=sys.stderr)
        sys.exit(1)
    return f"{row}\t{name}\t{wall:.4f}\t{usage.ru_utime:.4f}\t{usage.ru_stime:.4f}\t{usage.ru_maxrss}\n"
for _ in range(WARMUP):
    for name, command in commands:
        run(name, command)
with open(results, "a") as out:
    for _ in range(runs):
        for name, command in commands:
            out.write(run(name, command))
PY
}

# tree DIR FILES BYTES: FILES files of random sizes averaging BYTES/FILES, 100 per folder.
tree() {
  local dir="$1" files="$2" bytes="$3"
  [ -f "$dir/.done" ] && return
  rm -rf "$dir"; mkdir -p "$dir"
  python3 - "$dir" "$files" "$bytes" <<'EOF'
import os, random, sys
d, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(7)
avg = total // n
for i in range(n):
    sub = os.path.join(d, f"d{i // 100:04d}")
    if i % 100 == 0:
        os.makedirs(sub, exist_ok=True)
    size = random.randint(avg // 4, avg * 7 // 4)
    with open(os.path.join(sub, f"f{i:06d}.conf"), "wb") as f:
        f.write(random.randbytes(size))
EOF
  touch "$dir/.done"
}

# project DIR TREE: one image whose build copies TREE; origin a tiny folder. Written once:
# rewriting a file before each row made the rows after it measure a plan within two
# seconds of an edit (a racy file, read again and not cached).
tree_project() {
  local dir="$1"
  [ -f "$dir/imgraph.kdl" ] && return
  mkdir -p "$dir/origin/etc"
  echo bench > "$dir/origin/etc/hostname"
  cat > "$dir/imgraph.kdl" <<'EOF'
imgraph version=1
provider "local" {
    store ".imgraph/images"
    sandbox "none"
}
source "origin" { local "origin"; }
image "big" {
    from "origin"
    build "rootfs" { copy "tree" to="/srv/tree"; }
}
EOF
  (cd "$dir" && printf '.imgraph/\n' > .gitignore)
}

# The 20,000-file / 157 MB tree (and a 100,000-file one) planned cold, then warm.
tree_rows() {
  local kind="$1" tag="$2" files="$3" bytes="$4" dir="$OUT/tree-$2"
  tree_project "$dir"
  tree "$dir/tree" "$files" "$bytes"
  local list="$OUT/tree-$tag.files"
  (cd "$dir" && find tree -type f ! -name .done -print0) > "$list"
  if [ "$kind" = cold ]; then
    rm -rf "$dir/.imgraph"
    timed "cold$tag" "imgraph plan (no state)" "cd '$dir' && rm -rf .imgraph && '$IMGRAPH' plan" \
      "b3sum" "cd '$dir' && xargs -0 b3sum < '$list'"
  fi
  if [ "$kind" = warm ]; then
    (cd "$dir" && { [ -f .imgraph/state.db ] && "$IMGRAPH" plan --detailed-exitcode >/dev/null 2>&1; } || "$IMGRAPH" apply -q >/dev/null)
    if [ ! -d "$dir/.git" ]; then
      (cd "$dir" && git init -q && git add -A && git -c user.email=b@b -c user.name=b commit -qm tree)
    fi
    timed "warm$tag" "imgraph plan (warm)" "cd '$dir' && '$IMGRAPH' plan" \
      "git status" "cd '$dir' && git status --porcelain"
  fi
}

# N images from one tiny origin, each copying one small file: 2 nodes (build, publish) each.
many_project() {
  local dir="$1" n="$2"
  [ -f "$dir/.done" ] && return
  rm -rf "$dir"; mkdir -p "$dir/origin/etc" "$dir/files"
  echo bench > "$dir/origin/etc/hostname"
  {
    printf 'imgraph version=1\nprovider "local" {\n    store ".imgraph/images"\n    sandbox "none"\n}\n'
    printf 'source "origin" { local "origin"; }\n'
    for i in $(seq -w 1 "$n"); do
      echo "file $i" > "$dir/files/f$i.conf"
      printf 'image "img%s" {\n    from "origin"\n    build "rootfs" { copy "files/f%s.conf" to="/etc/f.conf"; }\n}\n' "$i" "$i"
    done
  } > "$dir/imgraph.kdl"
  touch "$dir/.done"
}

# 10 roots with 9 children each, every build a `sleep 0.3`.
sched_project() {
  local dir="$1"
  [ -f "$dir/.done" ] && return
  rm -rf "$dir"; mkdir -p "$dir/origin/etc"
  echo bench > "$dir/origin/etc/hostname"
  {
    printf 'imgraph version=1\nprovider "local" {\n    store ".imgraph/images"\n    sandbox "none"\n}\n'
    printf 'source "origin" { local "origin"; }\n'
    for r in $(seq 0 9); do
      printf 'image "r%s" {\n    from "origin"\n    build "rootfs" { run "sleep 0.3"; }\n}\n' "$r"
      for c in $(seq 1 9); do
        printf 'image "r%s-c%s" {\n    from "r%s"\n    build "rootfs" { run "sleep 0.3"; }\n}\n' "$r" "$c" "$r"
      done
    done
  } > "$dir/imgraph.kdl"
  touch "$dir/.done"
}

for row in $ROWS; do
  case "$row" in
    cold|warm) tree_rows "$row" "" 20000 157000000 ;;
    cold100k|warm100k) tree_rows "${row%100k}" 100k 100000 400000000 ;;
    noop|first)
      dir="$OUT/many-1000"; many_project "$dir" 1000
      if [ "$row" = first ]; then
        timed first "imgraph apply (no state, 2,000 nodes)" "cd '$dir' && rm -rf .imgraph && '$IMGRAPH' apply -q -j $JOBS"
      else
        (cd "$dir" && "$IMGRAPH" plan --detailed-exitcode >/dev/null 2>&1 || "$IMGRAPH" apply -q -j "$JOBS" >/dev/null)
        timed noop "imgraph apply (all up to date)" "cd '$dir' && '$IMGRAPH' apply -q"
      fi ;;
    first-tmpfs)
      many_project "$OUT/many-1000" 1000
      TMPFS="${TMPFS:-/dev/shm}"
      [ "$(stat -f -c %T "$TMPFS")" = tmpfs ] || { echo "compare.sh: $TMPFS is not a tmpfs (set TMPFS)" >&2; exit 1; }
      dir="$(mktemp -d "$TMPFS/imgraph-compare.XXXXXX")"
      cp -a "$OUT/many-1000/." "$dir/"; rm -rf "$dir/.imgraph"
      timed first-tmpfs "imgraph apply (no state, 2,000 nodes, on tmpfs)" "cd '$dir' && rm -rf .imgraph && '$IMGRAPH' apply -q -j $JOBS"
      rm -rf "$dir" ;;
    sched)
      dir="$OUT/sched"; sched_project "$dir"
      timed sched "imgraph apply -j $JOBS (100 × sleep 0.3)" "cd '$dir' && rm -rf .imgraph && '$IMGRAPH' apply -q -j $JOBS" ;;
    image)
      dir="$OUT/tree-"; tree_project "$dir"; tree "$dir/tree" 20000 157000000
      work="$OUT/image-peer"
      timed image "imgraph apply --force (copy 157 MB, pack)" "cd '$dir' && '$IMGRAPH' apply -q --force big" \
        "cp -a, then tar piped to zstd -3" "rm -rf '$work' && mkdir -p '$work' && cp -a '$dir/origin' '$work/root' && mkdir -p '$work/root/srv' && cp -a '$dir/tree' '$work/root/srv/tree' && tar -C '$work/root' -c . | zstd -q -3 > '$work/out.tar.zst'" ;;
    *) echo "compare.sh: unknown row $row" >&2; exit 2 ;;
  esac
done

python3 - "$RESULTS" "$RUNS" "$JOBS" <<'EOF' | tee "$OUT/compare.md"
import statistics, sys, collections, heapq
path, runs, jobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = collections.OrderedDict()
for line in open(path):
    row, name, wall, user, sys_, rss = line.rstrip("\n").split("\t")
    rows.setdefault(row, collections.OrderedDict()).setdefault(name, []).append(
        (float(wall), float(user) + float(sys_), int(rss)))
def med(xs, i): return statistics.median(x[i] for x in xs)
def sched_bound():
    # list scheduling of 10 roots (0.3 s) each followed by 9 children (0.3 s) on `jobs` slots
    t, running, ready = 0.0, [], [("r", r) for r in range(10)]
    while ready or running:
        while ready and len(running) < jobs:
            kind, r = ready.pop(0)
            heapq.heappush(running, (t + 0.3, kind, r))
        t, kind, r = heapq.heappop(running)
        if kind == "r":
            ready += [("c", r)] * 9
    return t
print(f"| row | command | wall (median of {runs}) | CPU | peak RSS | ratio |")
print("|---|---|---|---|---|---|")
for row, names in rows.items():
    items = list(names.items())
    base = None
    for i, (name, xs) in enumerate(items):
        w, c, m = med(xs, 0), med(xs, 1), med(xs, 2)
        ratio = ""
        if len(items) == 2 and i == 0:
            other = items[1][1]
            wb, cb = med(other, 0), med(other, 1)
            ratio = f"{w / wb:.2f}× the peer's time (CPU: {c / cb:.2f}×)" if wb and cb else ""
        if row.startswith("first"):
            ratio = f"{w / 2000 * 1000:.2f} ms wall per node"
        if row == "sched":
            b = sched_bound()
            ratio = f"{w / b:.2f}× the list-scheduling bound ({b:.2f} s at -j{jobs})"
        print(f"| {row} | {name} | {w:.4f} s | {c:.4f} s | {m / 1024:.1f} MiB | {ratio} |")
EOF
