//! Shared by the bench targets (`mod common;` in each).

use std::path::Path;
use std::time::SystemTime;

/// Writes `content` to `path` with its mtime set to `when` (an hour back keeps stat-cache
/// entries out of the racy window).
pub fn write_old(path: &Path, content: &[u8], when: SystemTime) {
    std::fs::write(path, content).expect("write bench file");
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(when))
        .expect("set bench file mtime");
}

/// The sizes to measure: all under `cargo bench`, only the smallest when `cargo test`
/// runs the bench once as a test (cargo passes `--bench` only to a measuring run), so the
/// test suite does not build the largest data sets in a debug build.
pub fn scale(all: &[usize]) -> &[usize] {
    if std::env::args().any(|a| a == "--bench") {
        all
    } else {
        &all[..1]
    }
}
