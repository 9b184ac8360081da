//! The config loader on arbitrary text: it may refuse, never panic or overflow its stack,
//! and rendering what it reports does not panic either (every span inside the text).
//! Paths in the config resolve against one empty project folder made for this process,
//! so inputs and globs are looked up in a folder nothing else changes.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn project() -> &'static Path {
    static PROJECT: OnceLock<tempfile::TempDir> = OnceLock::new();
    PROJECT
        .get_or_init(|| tempfile::tempdir().expect("create the project folder"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = imgraph::config::load_str(project(), "imgraph.kdl", text) {
        let _ = imgraph::config::render_plain(&e);
    }
});
