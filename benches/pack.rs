//! Packing and unpacking a root file system with the local store: a generated tree of
//! 3,000 files (~30 MB) in 30 folders, each file half text (compresses well, like configs
//! and scripts) and half pseudo-random bytes (does not, like binaries).
//!
//! - `pack/to-sink`: the deterministic walk, tar and zstd alone;
//! - `pack/store`: the same plus hashing, fsync and the atomic rename into the store;
//! - `unpack/store`: verifying the artifact and unpacking it into a fresh folder (the
//!   folder's removal is not timed);
//! - `pack/tar-zstd` and `unpack/zstd-tar`: the peers, GNU tar and the zstd command line at
//!   the same level with every core (`tar -c | zstd -3 -T0`, `zstd -d | tar -x`), run on the
//!   same tree and the same artifact in the same run, so the ratio holds while the machine's
//!   speed drifts. The peers neither hash, sort beyond tar's name order, nor sync.

use std::fs;
use std::hint::black_box;
use std::io;
use std::path::Path;
use std::process::Command;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use imgraph::provider::local::{pack_deterministic, Store};

const FOLDERS: usize = 30;
const FILES_PER_FOLDER: usize = 100;
const FILE_SIZE: usize = 10_000;

/// Writes the tree and returns its total size in bytes.
fn generate(root: &Path) -> u64 {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut total = 0u64;
    for dir in 0..FOLDERS {
        let d = root.join(format!("usr/share/pkg{dir:02}"));
        fs::create_dir_all(&d).expect("create bench folder");
        for file in 0..FILES_PER_FOLDER {
            let mut content = Vec::with_capacity(FILE_SIZE);
            while content.len() < FILE_SIZE / 2 {
                content.extend_from_slice(
                    format!("option_{file} = value {dir} # comment\n").as_bytes(),
                );
            }
            while content.len() < FILE_SIZE {
                // xorshift64: cheap, reproducible, incompressible enough.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                content.extend_from_slice(&state.to_le_bytes());
            }
            content.truncate(FILE_SIZE);
            fs::write(d.join(format!("file{file:03}.dat")), &content).expect("write bench file");
            total += content.len() as u64;
        }
    }
    total
}

fn bench_pack(c: &mut Criterion) {
    let work = tempfile::tempdir().expect("create bench folder");
    let tree = work.path().join("tree");
    let total = generate(&tree);
    let store = Store::new(work.path().join("store"));
    let (id, size) = store
        .pack_tree(&tree, &Default::default())
        .expect("pack bench tree");
    eprintln!(
        "bench tree: {total} bytes in {} files, packed to {size} bytes",
        FOLDERS * FILES_PER_FOLDER
    );

    let mut group = c.benchmark_group("pack");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(total));
    group.bench_function("to-sink", |b| {
        b.iter(|| {
            pack_deterministic(black_box(&tree), io::sink(), &Default::default()).expect("pack")
        })
    });
    group.bench_function("store", |b| {
        b.iter_batched(
            || {
                // A fresh store each time, so the write (not the keep-existing path) is timed.
                let dir = tempfile::tempdir_in(work.path()).expect("create bench store");
                let store = Store::new(dir.path().join("store"));
                (dir, store)
            },
            |(dir, store)| {
                black_box(store.pack_tree(&tree, &Default::default()).expect("pack"));
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("tar-zstd", |b| {
        b.iter(|| {
            shell(&format!(
                "tar -C '{}' --sort=name -cf - . | zstd -q -3 -T0 > /dev/null",
                tree.display()
            ))
        })
    });
    group.finish();

    let artifact = store.path_of(&id).expect("artifact path");
    let mut group = c.benchmark_group("unpack");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(total));
    group.bench_function("store", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(work.path()).expect("create bench folder"),
            |dest| {
                store
                    .unpack(&id, &dest.path().join("root"), &Default::default())
                    .expect("unpack");
                dest
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("zstd-tar", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(work.path()).expect("create bench folder"),
            |dest| {
                shell(&format!(
                    "zstd -q -d -c '{}' | tar -x -C '{}'",
                    artifact.display(),
                    dest.path().display()
                ));
                dest
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Runs a peer's pipeline; the bench stops if it fails (a missing `zstd` or `tar`).
fn shell(script: &str) {
    let status = Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {script}")])
        .status()
        .expect("run the peer (bash, tar, zstd)");
    assert!(status.success(), "peer failed: {script}");
}

criterion_group!(benches, bench_pack);
criterion_main!(benches);
