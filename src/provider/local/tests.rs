//! Behaviour of the local storage layer as the provider relies on it: determinism of ids,
//! faithful round trips, origin formats, and refusal to write outside a destination.

use std::collections::BTreeMap;
use std::fs::{self, File, FileTimes};
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use super::*;

/// A cancellation token nobody cancels.
fn go() -> CancellationToken {
    CancellationToken::new()
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Link { target: PathBuf },
}

/// Everything a root file system means, keyed by relative path (times left out).
fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let mode = meta.mode() & 0o7777;
        let node = if meta.file_type().is_symlink() {
            Node::Link {
                target: fs::read_link(entry.path()).unwrap(),
            }
        } else if meta.is_dir() {
            Node::Dir { mode }
        } else {
            Node::File {
                mode,
                data: fs::read(entry.path()).unwrap(),
            }
        };
        out.insert(rel, node);
    }
    out
}

fn write(path: &Path, data: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A small root file system with the shapes that matter.
fn sample_tree(root: &Path) {
    write(
        &root.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    write(
        &root.join("etc/shadow"),
        b"root:*:19000:0:99999:7:::\n",
        0o640,
    );
    write(&root.join("bin/busybox"), b"\x7fELF pretend", 0o755);
    write(&root.join("usr/bin/passwd"), b"setuid tool", 0o4755);
    fs::create_dir_all(root.join("var/empty")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("/bin/busybox", root.join("bin/sh")).unwrap();
    symlink("../bin/busybox", root.join("usr/bin/env")).unwrap();
}

fn pack_bytes(tree: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    pack_deterministic(tree, &mut out, &go()).unwrap();
    out
}

fn store_in(dir: &TempDir) -> Store {
    Store::new(dir.path().join("store"))
}

fn set_mtime(path: &Path, when: SystemTime) {
    let f = File::open(path).unwrap();
    f.set_times(FileTimes::new().set_modified(when).set_accessed(when))
        .unwrap();
}

fn store_files(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---- determinism -------------------------------------------------------------------

#[test]
fn same_tree_packed_twice_gives_identical_bytes_and_id() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    assert_eq!(pack_bytes(&tree), pack_bytes(&tree));

    let store = store_in(&dir);
    let (id1, size1) = store.pack_tree(&tree, &go()).unwrap();
    let (id2, size2) = store.pack_tree(&tree, &go()).unwrap();
    assert_eq!(id1, id2);
    assert_eq!(size1, size2);
    assert!(id1.starts_with("local:") && id1.len() == "local:".len() + 64);
    let stored = store.path_of(&id1).unwrap();
    assert_eq!(fs::metadata(&stored).unwrap().len(), size1);
    // The id is the blake3 of the stored bytes.
    let bytes = fs::read(&stored).unwrap();
    assert_eq!(id1, format!("local:{}", blake3::hash(&bytes).to_hex()));
    assert_eq!(bytes, pack_bytes(&tree));
}

#[test]
fn a_copy_made_in_another_order_with_other_times_has_the_same_id() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a");
    sample_tree(&a);

    // Build the same tree again, entries created in reverse order, with other mtimes.
    let b = dir.path().join("b");
    let snap = snapshot(&a);
    fs::create_dir_all(&b).unwrap();
    let mut paths: Vec<_> = snap.keys().cloned().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.clone()));
    for rel in &paths {
        let target = b.join(rel);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        match &snap[rel] {
            Node::Dir { .. } => fs::create_dir_all(&target).unwrap(),
            Node::File { mode, data } => write(&target, data, *mode),
            Node::Link { target: t } => symlink(t, &target).unwrap(),
        }
    }
    for rel in &paths {
        if let Node::Dir { mode } = &snap[rel] {
            fs::set_permissions(b.join(rel), fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for rel in &paths {
        if !matches!(snap[rel], Node::Link { .. }) {
            set_mtime(&b.join(rel), old);
        }
    }
    assert_eq!(snapshot(&b), snap);
    assert_ne!(
        fs::metadata(a.join("etc/passwd"))
            .unwrap()
            .modified()
            .unwrap(),
        fs::metadata(b.join("etc/passwd"))
            .unwrap()
            .modified()
            .unwrap()
    );

    let store = store_in(&dir);
    assert_eq!(
        store.pack_tree(&a, &go()).unwrap().0,
        store.pack_tree(&b, &go()).unwrap().0
    );
}

#[test]
fn changing_a_file_content_or_mode_changes_the_id() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let store = store_in(&dir);
    let (base, _) = store.pack_tree(&tree, &go()).unwrap();

    fs::write(tree.join("etc/passwd"), b"root:x:0:0:root:/root:/bin/ash\n").unwrap();
    let (content_changed, _) = store.pack_tree(&tree, &go()).unwrap();
    assert_ne!(content_changed, base);

    fs::set_permissions(tree.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
    let (mode_changed, _) = store.pack_tree(&tree, &go()).unwrap();
    assert_ne!(mode_changed, content_changed);
    assert_ne!(mode_changed, base);

    // Both old artifacts stay until removed: the store only adds.
    assert!(store.contains(&base) && store.contains(&content_changed));
}

#[test]
fn headers_carry_no_times_or_names_and_keep_numeric_owners() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    if running_as_root() {
        std::os::unix::fs::lchown(tree.join("etc/shadow"), Some(1234), Some(42)).unwrap();
    }
    let bytes = pack_bytes(&tree);
    let tar_bytes = zstd::decode_all(&bytes[..]).unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let header = entry.header();
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        assert!(header.as_gnu().is_some(), "{name} is not a GNU header");
        assert_eq!(header.mtime().unwrap(), 0, "{name}");
        assert_eq!(header.username_bytes(), Some(&b""[..]), "{name}");
        assert_eq!(header.groupname_bytes(), Some(&b""[..]), "{name}");
        assert!(!name.starts_with("./") && !name.starts_with('/'), "{name}");
        let on_disk = fs::symlink_metadata(tree.join(name.trim_end_matches('/'))).unwrap();
        assert_eq!(header.uid().unwrap(), u64::from(on_disk.uid()), "{name}");
        assert_eq!(header.gid().unwrap(), u64::from(on_disk.gid()), "{name}");
        if !on_disk.file_type().is_symlink() {
            assert_eq!(header.mode().unwrap(), on_disk.mode() & 0o7777, "{name}");
        }
        names.push(name);
    }
    assert!(names.contains(&"usr/bin/passwd".to_string()));
    assert!(names.contains(&"var/empty/".to_string()));
    // Parents come before children and siblings are in byte order.
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert!(pos("etc/") < pos("etc/passwd"));
    assert!(pos("etc/passwd") < pos("etc/shadow"));
    assert!(pos("bin/") < pos("etc/"));
}

// ---- round trips -------------------------------------------------------------------

#[test]
fn pack_then_unpack_gives_back_the_tree() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let out = dir.path().join("deep/out");
    store.unpack(&id, &out, &go()).unwrap();
    assert_eq!(snapshot(&out), snapshot(&tree));
    // The setuid bit and the sticky bit survive.
    assert_eq!(
        fs::metadata(out.join("usr/bin/passwd")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::metadata(out.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    // Repacking the unpacked tree gives the same image.
    assert_eq!(store.pack_tree(&out, &go()).unwrap().0, id);
}

#[test]
fn symlinks_round_trip_without_being_followed() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let outside = dir.path().join("outside");
    write(&outside.join("secret"), b"host data", 0o644);
    symlink("/bin/busybox", tree.join("sh")).unwrap();
    symlink(&outside, tree.join("escape")).unwrap();
    symlink("a/./b//c", tree.join("odd")).unwrap();

    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let out = dir.path().join("out");
    store.unpack(&id, &out, &go()).unwrap();

    assert_eq!(
        fs::read_link(out.join("sh")).unwrap(),
        PathBuf::from("/bin/busybox")
    );
    assert_eq!(fs::read_link(out.join("escape")).unwrap(), outside);
    assert_eq!(
        fs::read_link(out.join("odd")).unwrap(),
        PathBuf::from("a/./b//c")
    );
    let tar_bytes = zstd::decode_all(&fs::read(store.path_of(&id).unwrap()).unwrap()[..]).unwrap();
    let names: Vec<String> = tar::Archive::new(&tar_bytes[..])
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect();
    assert_eq!(
        names,
        ["escape", "odd", "sh"],
        "link targets must not be walked into"
    );
}

#[test]
fn empty_directories_survive() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("var/lib/empty")).unwrap();
    fs::create_dir_all(tree.join("proc")).unwrap();
    fs::set_permissions(tree.join("proc"), fs::Permissions::from_mode(0o555)).unwrap();
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let out = dir.path().join("out");
    store.unpack(&id, &out, &go()).unwrap();
    assert!(out.join("var/lib/empty").is_dir());
    assert_eq!(
        fs::metadata(out.join("proc")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(snapshot(&out), snapshot(&tree));
}

#[test]
fn long_paths_and_long_link_targets_round_trip() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    let long_dir: PathBuf = (0..8).map(|i| format!("directory-level-{i:02}")).collect();
    let long_file = long_dir.join("a-file-whose-name-is-also-rather-long-to-push-past-limits.conf");
    assert!(long_file.as_os_str().len() > 200);
    write(&tree.join(&long_file), b"deep", 0o600);
    let long_target = format!("/{}", long_file.display());
    assert!(long_target.len() > 100);
    symlink(&long_target, tree.join("link")).unwrap();

    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let out = dir.path().join("out");
    store.unpack(&id, &out, &go()).unwrap();
    assert_eq!(fs::read(out.join(&long_file)).unwrap(), b"deep");
    assert_eq!(
        fs::read_link(out.join("link")).unwrap(),
        PathBuf::from(&long_target)
    );
    assert_eq!(snapshot(&out), snapshot(&tree));
}

#[test]
fn hard_links_come_back_as_separate_files() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    write(&tree.join("bin/gzip"), b"same program", 0o755);
    fs::hard_link(tree.join("bin/gzip"), tree.join("bin/gunzip")).unwrap();
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let out = dir.path().join("out");
    store.unpack(&id, &out, &go()).unwrap();
    for name in ["bin/gzip", "bin/gunzip"] {
        let meta = fs::metadata(out.join(name)).unwrap();
        assert_eq!(meta.nlink(), 1, "{name}");
        assert_eq!(meta.mode() & 0o7777, 0o755, "{name}");
        assert_eq!(fs::read(out.join(name)).unwrap(), b"same program");
    }
}

#[test]
fn fifos_are_skipped() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    write(&tree.join("etc/hostname"), b"box\n", 0o644);
    let fifo = std::ffi::CString::new(
        tree.join("etc/initctl")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file system entry.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let out = dir.path().join("out");
    store.unpack(&id, &out, &go()).unwrap();
    assert!(out.join("etc/hostname").is_file());
    assert!(fs::symlink_metadata(out.join("etc/initctl")).is_err());
}

#[test]
fn ownership_is_restored_only_when_running_as_root() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    write(&tree.join("home/user/.profile"), b"PS1=$\n", 0o644);
    let recorded = if running_as_root() {
        std::os::unix::fs::lchown(tree.join("home/user/.profile"), Some(1000), Some(1000)).unwrap();
        1000
    } else {
        effective_uid()
    };
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let out = dir.path().join("out");
    store.unpack(&id, &out, &go()).unwrap();
    let uid = fs::metadata(out.join("home/user/.profile")).unwrap().uid();
    assert_eq!(uid, recorded);
}

#[test]
fn unpack_refuses_a_destination_that_is_not_empty() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let out = dir.path().join("out");
    write(&out.join("already-here"), b"x", 0o644);
    let err = store.unpack(&id, &out, &go()).unwrap_err();
    assert!(matches!(err, LocalError::Io { .. }), "{err}");
    assert_eq!(snapshot(&out).len(), 1);
    // An existing empty folder is fine.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    store.unpack(&id, &empty, &go()).unwrap();
}

// ---- store -------------------------------------------------------------------------

#[test]
fn store_writes_leave_no_temporary_files() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    store.pack_tree(&tree, &go()).unwrap();
    let hex = id.strip_prefix("local:").unwrap();
    assert_eq!(store_files(&store), [format!("{hex}.tar.zst")]);
}

#[test]
fn a_failed_pack_leaves_nothing_in_the_store() {
    let dir = TempDir::new().unwrap();
    let store = store_in(&dir);
    let err = store
        .pack_tree(&dir.path().join("missing"), &go())
        .unwrap_err();
    assert!(matches!(err, LocalError::Io { .. }), "{err}");
    assert!(store_files(&store).is_empty());
}

#[test]
fn contains_is_false_after_remove() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    assert!(store.contains(&id));
    store.remove(&id).unwrap();
    assert!(!store.contains(&id));
    assert!(store_files(&store).is_empty());
    // Removing twice is fine; unpacking a removed artifact is an error.
    store.remove(&id).unwrap();
    assert!(store.unpack(&id, &dir.path().join("out"), &go()).is_err());
}

#[test]
fn ids_that_are_not_local_are_rejected() {
    let store = Store::new("/nonexistent/store");
    let hex = "ab".repeat(32);
    assert_eq!(
        store.path_of(&format!("local:{hex}")),
        Some(PathBuf::from(format!("/nonexistent/store/{hex}.tar.zst")))
    );
    for bad in [
        "ami-0123456789abcdef0".to_string(),
        format!("local:{}", &hex[..63]),
        format!("local:{}", hex.to_uppercase()),
        format!("local:../{}", &hex[..61]),
        hex.clone(),
    ] {
        assert_eq!(store.path_of(&bad), None, "{bad}");
        assert!(!store.contains(&bad));
        assert!(matches!(
            store.remove(&bad),
            Err(LocalError::InvalidArtifactId { .. })
        ));
    }
}

#[test]
fn a_damaged_artifact_is_reported_corrupt_and_nothing_is_unpacked() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let path = store.path_of(&id).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, &bytes).unwrap();

    let out = dir.path().join("out");
    let err = store.unpack(&id, &out, &go()).unwrap_err();
    assert!(matches!(err, LocalError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("next `imgraph apply` rebuilds"),
        "{err}"
    );
    assert!(!out.exists());
    // The damaged bytes are set aside: the store no longer offers them under the id.
    assert!(!store.contains(&id));
    let aside = store.root().join("corrupt").join(path.file_name().unwrap());
    assert_eq!(fs::read(&aside).unwrap(), bytes);

    // Packing the same tree again repairs the artifact.
    assert_eq!(store.pack_tree(&tree, &go()).unwrap().0, id);
    store.unpack(&id, &out, &go()).unwrap();
    assert_eq!(snapshot(&out), snapshot(&tree));
}

// ---- origins -----------------------------------------------------------------------

/// A plain tar of `tree`, made with the tar crate the way other tools would.
fn plain_tar(tree: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", tree).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn tar_origins_unpack_in_every_format() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let tar_bytes = plain_tar(&tree);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).unwrap();
    let gz_bytes = gz.finish().unwrap();
    let zst_bytes = zstd::encode_all(&tar_bytes[..], 3).unwrap();

    let cases: [(&str, &[u8]); 7] = [
        ("base.tar", &tar_bytes),
        ("base.tar.gz", &gz_bytes),
        ("base.tgz", &gz_bytes),
        ("base.tar.zst", &zst_bytes),
        ("base.tzst", &zst_bytes),
        // No telling extension: recognised by magic bytes.
        ("base-zst.img", &zst_bytes),
        ("base-tar", &tar_bytes),
    ];
    let expected = snapshot(&tree);
    for (name, bytes) in cases {
        let origin = dir.path().join(name);
        fs::write(&origin, bytes).unwrap();
        let dest = dir.path().join(format!("out-{name}"));
        unpack_origin(&origin, &dest, &go()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(snapshot(&dest), expected, "{name}");
    }
}

#[test]
fn directory_origins_are_copied_with_modes_and_symlinks() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    // A read-only folder with contents must still be copied.
    write(&tree.join("usr/share/doc/README"), b"docs", 0o444);
    fs::set_permissions(
        tree.join("usr/share/doc"),
        fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    let dest = dir.path().join("out");
    unpack_origin(&tree, &dest, &go()).unwrap();
    assert_eq!(snapshot(&dest), snapshot(&tree));
    assert!(fs::symlink_metadata(dest.join("bin/sh"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Same tree, same image, whichever way it came in.
    let store = store_in(&dir);
    assert_eq!(
        store.pack_tree(&dest, &go()).unwrap().0,
        store.pack_tree(&tree, &go()).unwrap().0
    );
    remove_tree(&dest).unwrap();
    remove_tree(&tree).unwrap();
}

#[test]
fn an_unrecognised_origin_is_unsupported() {
    let dir = TempDir::new().unwrap();
    let origin = dir.path().join("base.img");
    fs::write(&origin, b"PK\x03\x04 this is a zip file, not a tarball").unwrap();
    let err = unpack_origin(&origin, &dir.path().join("out"), &go()).unwrap_err();
    assert!(matches!(err, LocalError::UnsupportedOrigin { .. }), "{err}");
    assert!(!dir.path().join("out").exists());
}

/// A tar with one harmless entry and then one whose name is written raw (the tar builder
/// refuses unsafe names, which is the point).
fn tar_with_raw_name(raw_name: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut ok = tar::Header::new_gnu();
    ok.set_entry_type(tar::EntryType::Regular);
    ok.set_uid(0);
    ok.set_gid(0);
    ok.set_mode(0o644);
    ok.set_size(2);
    builder.append_data(&mut ok, "ok.txt", &b"ok"[..]).unwrap();

    let mut evil = tar::Header::new_gnu();
    evil.as_old_mut().name[..raw_name.len()].copy_from_slice(raw_name);
    evil.set_entry_type(tar::EntryType::Regular);
    evil.set_uid(0);
    evil.set_gid(0);
    evil.set_mode(0o644);
    evil.set_size(4);
    evil.set_cksum();
    builder.append(&evil, &b"evil"[..]).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn an_origin_entry_with_dotdot_is_refused_and_nothing_escapes() {
    let dir = TempDir::new().unwrap();
    let origin = dir.path().join("base.tar");
    fs::write(&origin, tar_with_raw_name(b"../evil")).unwrap();
    let dest = dir.path().join("out");
    let err = unpack_origin(&origin, &dest, &go()).unwrap_err();
    match &err {
        LocalError::UnsafeEntry { entry, path } => {
            assert_eq!(entry, "../evil");
            assert_eq!(path, &origin);
        }
        other => panic!("expected an unsafe entry, got {other:?}"),
    }
    assert!(!dir.path().join("evil").exists());
}

#[test]
fn an_origin_entry_with_an_absolute_path_is_refused() {
    let dir = TempDir::new().unwrap();
    let victim = dir.path().join("victim");
    let origin = dir.path().join("base.tar");
    fs::write(
        &origin,
        tar_with_raw_name(victim.as_os_str().as_encoded_bytes()),
    )
    .unwrap();
    let err = unpack_origin(&origin, &dir.path().join("out"), &go()).unwrap_err();
    assert!(matches!(err, LocalError::UnsafeEntry { .. }), "{err}");
    assert!(!victim.exists());
}

#[test]
fn an_origin_cannot_write_through_its_own_symlink() {
    let dir = TempDir::new().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();

    let mut builder = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_uid(0);
    link.set_gid(0);
    link.set_mode(0o777);
    link.set_size(0);
    builder.append_link(&mut link, "etc", &outside).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mode(0o644);
    file.set_size(4);
    builder
        .append_data(&mut file, "etc/passwd", &b"evil"[..])
        .unwrap();
    let origin = dir.path().join("base.tar");
    fs::write(&origin, builder.into_inner().unwrap()).unwrap();

    let err = unpack_origin(&origin, &dir.path().join("out"), &go()).unwrap_err();
    match &err {
        LocalError::UnsafeEntry { entry, .. } => assert_eq!(entry, "etc/passwd"),
        other => panic!("expected an unsafe entry, got {other:?}"),
    }
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
}

// ---- copy_into and remove_tree -----------------------------------------------------

#[test]
fn copy_into_creates_parents_and_keeps_the_exec_bit() {
    let dir = TempDir::new().unwrap();
    let project = dir.path().join("project");
    write(&project.join("scripts/provision.sh"), b"#!/bin/sh\n", 0o755);
    write(&project.join("config/common/app.conf"), b"a=1\n", 0o640);
    symlink("app.conf", project.join("config/common/current.conf")).unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();

    copy_into(
        &project.join("scripts/provision.sh"),
        &root,
        "/opt/acme/provision.sh",
        &go(),
    )
    .unwrap();
    let copied = fs::metadata(root.join("opt/acme/provision.sh")).unwrap();
    assert_eq!(copied.mode() & 0o7777, 0o755);
    assert_eq!(
        fs::metadata(root.join("opt/acme")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::read(root.join("opt/acme/provision.sh")).unwrap(),
        b"#!/bin/sh\n"
    );

    copy_into(&project.join("config/common"), &root, "/etc/acme", &go()).unwrap();
    assert_eq!(
        snapshot(&root.join("etc/acme")),
        snapshot(&project.join("config/common"))
    );
    assert_eq!(
        fs::read_link(root.join("etc/acme/current.conf")).unwrap(),
        PathBuf::from("app.conf")
    );

    // Copying again merges and replaces files in place.
    fs::write(project.join("config/common/app.conf"), b"a=2\n").unwrap();
    copy_into(&project.join("config/common"), &root, "/etc/acme", &go()).unwrap();
    assert_eq!(fs::read(root.join("etc/acme/app.conf")).unwrap(), b"a=2\n");
}

#[test]
fn copy_into_resolves_parent_symlinks_inside_the_image() {
    let dir = TempDir::new().unwrap();
    let outside = dir.path().join("host-etc");
    fs::create_dir(&outside).unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("usr/sbin")).unwrap();
    // Merged /usr, and an absolute link that names a host folder.
    symlink("usr/sbin", root.join("sbin")).unwrap();
    symlink(&outside, root.join("etc")).unwrap();
    let src = dir.path().join("tool");
    write(&src, b"#!/bin/sh\n", 0o755);

    copy_into(&src, &root, "/sbin/tool", &go()).unwrap();
    assert_eq!(
        fs::read(root.join("usr/sbin/tool")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert!(fs::symlink_metadata(root.join("sbin"))
        .unwrap()
        .file_type()
        .is_symlink());

    // `/etc -> /tmp/.../host-etc` means that folder *inside the image*.
    copy_into(&src, &root, "/etc/acme/tool", &go()).unwrap();
    let inside = root
        .join(outside.strip_prefix("/").unwrap())
        .join("acme/tool");
    assert!(inside.is_file());
    assert!(fs::read_dir(&outside).unwrap().next().is_none());

    // A folder merges through a link too.
    let conf = dir.path().join("conf");
    write(&conf.join("sbin/helper"), b"x", 0o755);
    copy_into(&conf, &root, "/", &go()).unwrap();
    assert!(root.join("usr/sbin/helper").is_file());

    // `..` written in `to` is still refused; inside a link it stops at the root.
    let err = copy_into(&src, &root, "/../app.conf", &go()).unwrap_err();
    assert!(matches!(err, LocalError::UnsafeEntry { .. }), "{err}");
    symlink("../../../../..", root.join("up")).unwrap();
    copy_into(&src, &root, "/up/escaped", &go()).unwrap();
    assert!(root.join("escaped").is_file());
}

#[test]
fn resolve_in_image_stays_inside_the_root_and_stops_link_loops() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    symlink("/usr/lib", root.join("lib")).unwrap();
    symlink("../../../lib", root.join("usr/up")).unwrap();
    symlink("loop-b", root.join("loop-a")).unwrap();
    symlink("loop-a", root.join("loop-b")).unwrap();
    let resolve = |p: &str, last| resolve_in_image(&root, Path::new(p), last).unwrap();
    assert_eq!(resolve("/lib/x.so", false), PathBuf::from("usr/lib/x.so"));
    assert_eq!(resolve("/usr/up/y", false), PathBuf::from("usr/lib/y"));
    assert_eq!(resolve("/lib", false), PathBuf::from("lib"));
    assert_eq!(resolve("/lib", true), PathBuf::from("usr/lib"));
    assert_eq!(
        resolve("/missing/a/../b", false),
        PathBuf::from("missing/b")
    );
    assert!(resolve_in_image(&root, Path::new("/loop-a/x"), false).is_err());
}

#[test]
fn sparse_files_stay_sparse_and_pack_by_content() {
    let dir = TempDir::new().unwrap();
    let size: u64 = 64 << 20;
    let sparse_tree = dir.path().join("sparse");
    fs::create_dir_all(sparse_tree.join("var/log")).unwrap();
    let lastlog = sparse_tree.join("var/log/lastlog");
    {
        let f = File::create(&lastlog).unwrap();
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_at(b"head", 0).unwrap();
        f.write_at(b"middle", size / 2 + 10).unwrap();
    }
    fs::set_permissions(&lastlog, fs::Permissions::from_mode(0o664)).unwrap();
    // The same content written out in full: the file system has no holes in it.
    let dense_tree = dir.path().join("dense");
    fs::create_dir_all(dense_tree.join("var/log")).unwrap();
    let dense = dense_tree.join("var/log/lastlog");
    {
        let mut f = File::create(&dense).unwrap();
        let mut content = vec![0u8; size as usize];
        content[..4].copy_from_slice(b"head");
        let at = (size / 2 + 10) as usize;
        content[at..at + 6].copy_from_slice(b"middle");
        f.write_all(&content).unwrap();
    }
    fs::set_permissions(&dense, fs::Permissions::from_mode(0o664)).unwrap();
    assert!(fs::metadata(&dense).unwrap().blocks() * 512 >= size);

    let store = store_in(&dir);
    let (id, packed) = store.pack_tree(&sparse_tree, &go()).unwrap();
    let (dense_id, _) = store.pack_tree(&dense_tree, &go()).unwrap();
    assert_eq!(id, dense_id, "holes are content, not allocation");
    assert!(packed < 64 * 1024, "{packed} bytes");

    let out = dir.path().join("out");
    store.unpack(&id, &out, &go()).unwrap();
    let unpacked = out.join("var/log/lastlog");
    let meta = fs::metadata(&unpacked).unwrap();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
    assert_eq!(meta.mode() & 0o7777, 0o664);
    let mut data = Vec::new();
    File::open(&unpacked)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    assert_eq!(&data[..4], b"head");
    let at = (size / 2 + 10) as usize;
    assert_eq!(&data[at..at + 6], b"middle");
    assert_eq!(data.iter().filter(|&&b| b != 0).count(), 10);
    // GNU tar reads it as the same file.
    if Path::new("/usr/bin/tar").exists() {
        let listing = std::process::Command::new("tar")
            .args(["--zstd", "-tvf"])
            .arg(store.path_of(&id).unwrap())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains(&size.to_string()), "{text}");
    }
}

#[test]
fn a_sparse_file_with_many_runs_and_a_trailing_hole_round_trips() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let path = tree.join("disk.img");
    let size: u64 = 40 << 20;
    {
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        // 30 runs: more than the header's 4 and one extension header's 21.
        for i in 0..30u64 {
            f.write_at(
                format!("run {i}").as_bytes(),
                i * (1 << 20) + 4096 * (i % 3),
            )
            .unwrap();
        }
    }
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let out = dir.path().join("out");
    store.unpack(&id, &out, &go()).unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        fs::read(out.join("disk.img")).unwrap()
    );
}

#[test]
fn the_store_is_private() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(store.root()), 0o700);
    assert_eq!(mode(&store.path_of(&id).unwrap()), 0o600);
}

#[test]
fn empty_tmp_keeps_the_folder_and_its_mode() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("root");
    write(&root.join("tmp/upload/app.conf"), b"x", 0o644);
    write(&root.join("tmp/.hidden"), b"x", 0o600);
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    tree::empty_tmp(&root).unwrap();
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
}

#[test]
fn removal_and_packing_never_enter_a_mount_point() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("NOT RUN: needs root to bind-mount");
        return;
    }
    let dir = TempDir::new().unwrap();
    let host = dir.path().join("host");
    write(&host.join("keep.txt"), b"host data", 0o644);
    let root = dir.path().join("staging/root");
    fs::create_dir_all(root.join("mnt/host")).unwrap();
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&host)
        .arg(root.join("mnt/host"))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(mounts::mounts_under(&root).unwrap().len(), 1);

    let store = store_in(&dir);
    let err = store.pack_tree(&root, &go()).unwrap_err();
    assert!(matches!(err, LocalError::MountLeft { .. }), "{err}");
    assert!(err.to_string().contains("mnt/host"), "{err}");

    remove_tree(&dir.path().join("staging")).unwrap();
    assert!(!dir.path().join("staging").exists());
    assert_eq!(fs::read(host.join("keep.txt")).unwrap(), b"host data");
}

#[test]
fn copy_into_replaces_a_symlink_instead_of_writing_through_it() {
    let dir = TempDir::new().unwrap();
    let host_file = dir.path().join("host-resolv.conf");
    fs::write(&host_file, b"host\n").unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    symlink(&host_file, root.join("etc/resolv.conf")).unwrap();
    let src = dir.path().join("resolv.conf");
    write(&src, b"nameserver 10.0.0.2\n", 0o644);

    copy_into(&src, &root, "/etc/resolv.conf", &go()).unwrap();
    assert_eq!(fs::read(&host_file).unwrap(), b"host\n");
    let meta = fs::symlink_metadata(root.join("etc/resolv.conf")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        fs::read(root.join("etc/resolv.conf")).unwrap(),
        b"nameserver 10.0.0.2\n"
    );
}

#[test]
fn remove_tree_removes_read_only_folders() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("instance");
    write(&tree.join("usr/share/doc/README"), b"docs", 0o444);
    fs::set_permissions(
        tree.join("usr/share/doc"),
        fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    fs::create_dir_all(tree.join("locked/inner")).unwrap();
    fs::set_permissions(tree.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    // A link out of the tree is removed, and what it points to is left alone.
    let keep = dir.path().join("keep");
    write(&keep.join("file"), b"keep", 0o444);
    fs::set_permissions(&keep, fs::Permissions::from_mode(0o555)).unwrap();
    symlink(&keep, tree.join("link")).unwrap();

    remove_tree(&tree).unwrap();
    assert!(!tree.exists());
    assert!(keep.join("file").exists());
    assert_eq!(fs::metadata(&keep).unwrap().mode() & 0o7777, 0o555);
    // Removing what is already gone is fine (cleanup retries after a crash).
    remove_tree(&tree).unwrap();
    fs::set_permissions(&keep, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn unreadable_files_owned_by_us_are_still_packed_with_their_mode() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    write(&tree.join("etc/gshadow"), b"root:*::\n", 0o000);
    let store = store_in(&dir);
    let (id, _) = store.pack_tree(&tree, &go()).unwrap();
    assert_eq!(
        fs::metadata(tree.join("etc/gshadow")).unwrap().mode() & 0o7777,
        0
    );
    let out = dir.path().join("out");
    store.unpack(&id, &out, &go()).unwrap();
    assert_eq!(
        fs::metadata(out.join("etc/gshadow")).unwrap().mode() & 0o7777,
        0
    );
    let mut data = Vec::new();
    // Reading back needs the permission again (root reads regardless).
    fs::set_permissions(out.join("etc/gshadow"), fs::Permissions::from_mode(0o400)).unwrap();
    File::open(out.join("etc/gshadow"))
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    assert_eq!(data, b"root:*::\n");
}

// ---- cancellation ---------------------------------------------------------------------

/// A reader that cancels `token` once `after` bytes went through: the run is cancelled in
/// the middle of a long unpack.
struct CancelAfter<R> {
    inner: R,
    after: usize,
    seen: usize,
    token: CancellationToken,
}

impl<R: Read> Read for CancelAfter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n;
        if self.seen >= self.after {
            self.token.cancel();
        }
        Ok(n)
    }
}

#[test]
fn a_cancelled_unpack_stops_inside_a_big_file() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    // 16 MiB (not zeros, which would be packed sparse); the token is cancelled after
    // the first megabyte.
    write(&tree.join("big"), &vec![0x5a; 16 << 20], 0o644);
    write(&tree.join("zz-after"), b"never reached\n", 0o644);
    let mut tar = Vec::new();
    pack_deterministic(&tree, &mut tar, &go()).unwrap();
    let decoded = zstd::stream::decode_all(&tar[..]).unwrap();

    let token = CancellationToken::new();
    let reader = CancelAfter {
        inner: &decoded[..],
        after: 1 << 20,
        seen: 0,
        token: token.clone(),
    };
    let out = dir.path().join("out");
    let err = unpack::unpack_tar(reader, &out, Path::new("big.tar"), &token).unwrap_err();
    assert!(matches!(err, LocalError::Cancelled), "{err:?}");
    let written = fs::metadata(out.join("big")).map(|m| m.len()).unwrap_or(0);
    assert!(written < 16 << 20, "the whole file was written: {written}");
    assert!(!out.join("zz-after").exists());
}

#[test]
fn a_cancelled_pack_fails_and_leaves_no_temporary_file() {
    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    write(&tree.join("a"), b"a\n", 0o644);
    let store = Store::new(dir.path().join("store"));
    let token = CancellationToken::new();
    token.cancel();
    let err = store.pack_tree(&tree, &token).unwrap_err();
    assert!(matches!(err, LocalError::Cancelled), "{err:?}");
    let left: Vec<_> = fs::read_dir(store.root()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_cancelled_copy_or_origin_unpack_fails_as_cancelled() {
    let dir = TempDir::new().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    write(&src.join("file"), b"data\n", 0o644);
    let token = CancellationToken::new();
    token.cancel();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let err = copy_into(&src.join("file"), &root, "/etc/file", &token).unwrap_err();
    assert!(matches!(err, LocalError::Cancelled), "{err:?}");
    let err = unpack_origin(&src, &dir.path().join("out"), &token).unwrap_err();
    assert!(matches!(err, LocalError::Cancelled), "{err:?}");
}

// ---- read-ahead ----------------------------------------------------------------------

/// Gives `good` bytes in small reads, then fails.
struct FailsAfter {
    good: Vec<u8>,
    at: usize,
}

impl Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.good.len() {
            return Err(std::io::Error::other("disk read error"));
        }
        let n = buf.len().min(1000).min(self.good.len() - self.at);
        buf[..n].copy_from_slice(&self.good[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn read_ahead_hands_on_every_byte_and_then_the_error() {
    let good: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let mut ahead = unpack::read_ahead(FailsAfter {
        good: good.clone(),
        at: 0,
    })
    .unwrap();
    let mut got = Vec::new();
    let err = ahead.read_to_end(&mut got).unwrap_err();
    assert_eq!(err.to_string(), "disk read error");
    assert_eq!(got, good);

    let mut clean = unpack::read_ahead(std::io::Cursor::new(good.clone())).unwrap();
    let mut all = Vec::new();
    clean.read_to_end(&mut all).unwrap();
    assert_eq!(all, good, "a stream that ends cleanly ends with every byte");
}
