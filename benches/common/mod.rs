//! Shared by the bench targets (`mod common;` in each).

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
