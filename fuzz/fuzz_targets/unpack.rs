//! The origin unpacker on arbitrary archives: it may refuse, never panic, and never write
//! outside its destination. Each input is unpacked into `dest/` next to an empty
//! `outside/` folder; afterwards the parent holds exactly those two and `outside/` is
//! still empty. The archive has no extension, so its format comes from its magic bytes:
//! plain, gzip and zstd tar streams are all reached.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("temporary folder");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).expect("outside folder");
    let origin = tmp.path().join("origin");
    std::fs::write(&origin, data).expect("write origin");
    let dest = tmp.path().join("dest");
    let cancel = tokio_util::sync::CancellationToken::new();
    let _ = imgraph::provider::local::unpack_origin(&origin, &dest, &cancel);
    let _ = imgraph::provider::local::check_origin(&origin, &cancel);
    let mut names: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    let allowed = ["dest", "origin", "outside"];
    assert!(
        names.iter().all(|n| allowed.iter().any(|a| n == *a)),
        "unpack wrote next to its destination: {names:?}"
    );
    assert!(
        std::fs::read_dir(&outside).expect("list").next().is_none(),
        "unpack wrote outside its destination"
    );
    let _ = imgraph::provider::local::remove_tree(&dest);
});
