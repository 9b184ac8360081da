//! The origin unpacker on arbitrary archives: it may refuse, never panic, and never write
//! outside its destination.
//!
//! One work folder per process holds `origin` (the input), `outside/sentinel` (a file with
//! known content) and the destination `a/b/dest`, two levels down so that `..` escapes and
//! relative symlinks out of it land in folders this target watches. After each input is
//! unpacked (and checked), the work folder outside `a/b/dest` must hold exactly those
//! entries, the sentinel must be a plain file with its content and a single link (a hard
//! link to it would be a way out), and `dest` must be a real folder. The origin has no
//! extension, so its format comes from its magic bytes: plain, gzip and zstd tar are all
//! reached. `IMGRAPH_FUZZ_WORK` names the work folder (`scripts/fuzz.sh` sets it and puts
//! its path in the dictionary, so absolute symlink targets can aim at it too).
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use imgraph::provider::local::{check_origin, remove_tree, unpack_origin};
use libfuzzer_sys::fuzz_target;

const SENTINEL: &[u8] = b"outside the destination: never changed\n";
/// Everything the work folder holds besides the destination and its contents.
const EXPECTED: [&str; 5] = ["a", "a/b", "origin", "outside", "outside/sentinel"];

fn work() -> &'static Path {
    static WORK: OnceLock<PathBuf> = OnceLock::new();
    WORK.get_or_init(|| {
        let root = std::env::var_os("IMGRAPH_FUZZ_WORK")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("imgraph-fuzz-unpack-{}", std::process::id()))
            });
        remove_tree(&root).expect("clear the work folder");
        fs::create_dir_all(root.join("outside")).expect("create outside/");
        fs::write(root.join("outside/sentinel"), SENTINEL).expect("write the sentinel");
        fs::create_dir_all(root.join("a/b")).expect("create a/b/");
        root
    })
}

/// Every path under `root` (relative, symlinks not followed), except below `skip`.
fn listing(root: &Path, rel: &Path, skip: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(root.join(rel)).expect("list the work folder") {
        let entry = entry.expect("read a work folder entry");
        let path = rel.join(entry.file_name());
        out.push(path.to_string_lossy().into_owned());
        let is_dir = entry.file_type().expect("entry type").is_dir();
        if is_dir && path != skip {
            listing(root, &path, skip, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let work = work();
    let origin = work.join("origin");
    let dest = work.join("a/b/dest");
    fs::write(&origin, data).expect("write the origin");
    let cancel = tokio_util::sync::CancellationToken::new();
    let _ = unpack_origin(&origin, &dest, &cancel);
    let _ = check_origin(&origin, &cancel);

    let mut found = Vec::new();
    listing(work, Path::new(""), Path::new("a/b/dest"), &mut found);
    found.retain(|p| p != "a/b/dest");
    found.sort();
    assert_eq!(found, EXPECTED, "unpack wrote outside its destination");
    // A refusal before anything was created leaves no destination; otherwise it is a folder.
    if let Ok(meta) = fs::symlink_metadata(&dest) {
        assert!(meta.is_dir(), "the destination is no longer a folder");
    }
    let sentinel = work.join("outside/sentinel");
    let meta = fs::symlink_metadata(&sentinel).expect("the sentinel");
    assert!(
        meta.is_file(),
        "the sentinel outside the destination was replaced"
    );
    assert_eq!(
        meta.nlink(),
        1,
        "unpack hard-linked the sentinel outside its destination"
    );
    assert_eq!(
        fs::read(&sentinel).expect("read the sentinel"),
        SENTINEL,
        "unpack changed a file outside its destination"
    );
    remove_tree(&dest).expect("remove what was unpacked");
});
