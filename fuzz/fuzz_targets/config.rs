//! The config loader on arbitrary text: it may refuse, never panic or overflow its stack.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = std::env::temp_dir();
    if let Err(e) = imgraph::config::load_str(&dir, "imgraph.kdl", text) {
        // Rendering the diagnostics must not panic either (spans inside the text).
        let _ = imgraph::config::render_plain(&e);
    }
});
