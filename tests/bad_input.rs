//! The bad-input corpus (invariant 6: bad input gets a clear error and changes nothing).
//!
//! Each case starts from a small project that has been applied once, breaks one thing —
//! a config, an input, a package list, an origin, the state file — and runs
//! `imgraph apply`. Every case must exit 1 with one error that names what is wrong (the
//! case's `needle`), never panic, and leave the state file byte for byte as it was.
//! Files git cannot hold (FIFOs, sockets, devices, non-UTF-8 names, 50 MB configs) are
//! made here, which is why the corpus is code rather than a folder of fixtures.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use common::*;

/// The base project: one local image from a plain tar origin, with inputs, a package
/// list, a copy step and a test.
const BASE: &str = r#"
source "origin" { local "origin.tar"; }
image "app" {
    from "origin"
    build "rootfs" {
        copy "files" to="/etc/app"
        run "true"
    }
    input "inputs"
    packages "packages.txt"
    test "t" {
        input "tests"
        run "true"
    }
}
"#;

/// One tar entry: name, type flag, link target, data.
type Entry<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

/// Entries of a tar archive, written byte for byte (names are not checked, so hostile
/// archives can be made).
fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out
}

/// A good origin: 50 small files, then the end-of-archive marker.
fn good_tar() -> Vec<u8> {
    let names: Vec<String> = (0..50).map(|i| format!("etc/f{i:02}")).collect();
    let entries: Vec<Entry> = names
        .iter()
        .map(|n| (n.as_bytes(), b'0', &b""[..], &b"content\n"[..]))
        .collect();
    let mut out = tar_bytes(&[(b"etc/", b'5', b"", b"")]);
    out.extend(tar_bytes(&entries));
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The base project, applied once; each case copies it.
fn template() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(&d.join("imgraph.kdl"), BASE);
        fs::write(d.join("origin.tar"), good_tar()).unwrap();
        for f in ["files/app.conf", "inputs/a.sh", "tests/check.sh"] {
            fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            write(&d.join(f), "echo ok\n");
        }
        write(&d.join("packages.txt"), "curl\nhtop\n");
        imgraph(d).arg("apply").assert().code(0);
        t
    })
    .path()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo only reads the NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {path:?}"
    );
}

fn mknod_null(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod only reads the path; /dev/zero's numbers (1, 5): endless reads.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) };
    assert_eq!(rc, 0, "mknod {path:?} (root is needed)");
}

fn socket(path: &Path) {
    std::mem::forget(std::os::unix::net::UnixListener::bind(path).unwrap());
}

fn config(dir: &Path, f: impl FnOnce(&str) -> String) {
    let cfg = dir.join("imgraph.kdl");
    let text = fs::read_to_string(&cfg).unwrap();
    write(&cfg, &f(&text));
}

fn replace_in_config(dir: &Path, from: &str, to: &str) {
    config(dir, |t| {
        assert!(t.contains(from), "{from}");
        t.replace(from, to)
    });
}

fn origin(dir: &Path, bytes: &[u8]) {
    fs::write(dir.join("origin.tar"), bytes).unwrap();
}

type Setup = fn(&Path);

/// (name, what breaks, the words the error must contain)
const CASES: &[(&str, Setup, &str)] = &[
    // ---- the config file itself
    (
        "config-nested-2000-deep",
        |d| {
            config(d, |t| {
                format!("{t}\nx {}{}\n", "y {".repeat(2000), "}".repeat(2000))
            })
        },
        "nested more than 64 levels",
    ),
    (
        "config-50-mb",
        |d| {
            config(d, |t| {
                format!(
                    "{t}{}",
                    "// padding padding padding padding padding padding\n".repeat(1_000_000)
                )
            })
        },
        "larger than 4 MiB",
    ),
    (
        "shared-state-over-local-history",
        |d| {
            config(d, |t| {
                format!("{t}\nstate {{ s3 bucket=\"acme-imgraph\" region=\"eu-west-1\"; }}\n")
            })
        },
        "imgraph state push",
    ),
    (
        "config-not-utf8",
        |d| {
            let mut b = fs::read(d.join("imgraph.kdl")).unwrap();
            b.extend_from_slice(b"\n// \xff\xfe\n");
            fs::write(d.join("imgraph.kdl"), b).unwrap();
        },
        "not UTF-8",
    ),
    (
        "config-nul-byte",
        |d| config(d, |t| format!("{t}\nimage \"x\0y\" {{ }}\n")),
        "imgraph.kdl",
    ),
    (
        "config-is-a-fifo",
        |d| {
            fs::remove_file(d.join("imgraph.kdl")).unwrap();
            mkfifo(&d.join("imgraph.kdl"));
        },
        "not a regular file",
    ),
    (
        "config-is-a-directory",
        |d| {
            fs::remove_file(d.join("imgraph.kdl")).unwrap();
            fs::create_dir(d.join("imgraph.kdl")).unwrap();
        },
        "imgraph.kdl",
    ),
    (
        "config-symlink-loop",
        |d| {
            fs::remove_file(d.join("imgraph.kdl")).unwrap();
            std::os::unix::fs::symlink("imgraph.kdl", d.join("imgraph.kdl")).unwrap();
        },
        "imgraph.kdl",
    ),
    (
        "config-device",
        |d| {
            fs::remove_file(d.join("imgraph.kdl")).unwrap();
            mknod_null(&d.join("imgraph.kdl"));
        },
        "not a regular file",
    ),
    (
        "image-name-escape-sequence",
        |d| replace_in_config(d, "image \"app\"", r#"image "app\u{1b}[31m""#),
        "control character",
    ),
    (
        "image-name-newline",
        |d| replace_in_config(d, "image \"app\"", r#"image "a\npp""#),
        "control character",
    ),
    (
        "source-name-bell",
        |d| {
            config(d, |t| {
                t.replace("source \"origin\"", r#"source "or\u{7}igin""#)
                    .replace("from \"origin\"", r#"from "or\u{7}igin""#)
            })
        },
        "control character",
    ),
    (
        "path-with-control-character",
        |d| replace_in_config(d, "input \"inputs\"", "input \"inp\u{1b}uts\""),
        "inp",
    ),
    // ---- inputs
    (
        "state-truncated",
        |d| {
            let state = d.join(".imgraph/state.db");
            let bytes = fs::read(&state).unwrap();
            fs::write(&state, &bytes[..bytes.len() / 3]).unwrap();
        },
        "state.db",
    ),
    (
        "state-is-a-directory",
        |d| {
            fs::remove_file(d.join(".imgraph/state.db")).unwrap();
            fs::create_dir(d.join(".imgraph/state.db")).unwrap();
        },
        "state.db",
    ),
    (
        "input-fifo-named",
        |d| {
            mkfifo(&d.join("pipe"));
            replace_in_config(d, "input \"inputs\"", "input \"pipe\"");
        },
        "pipe",
    ),
    (
        "input-socket-named",
        |d| {
            socket(&d.join("sock"));
            replace_in_config(d, "input \"inputs\"", "input \"sock\"");
        },
        "sock",
    ),
    (
        "input-device-named",
        |d| {
            mknod_null(&d.join("zero"));
            replace_in_config(d, "input \"inputs\"", "input \"zero\"");
        },
        "zero",
    ),
    (
        "copy-source-fifo",
        |d| {
            mkfifo(&d.join("pipe"));
            replace_in_config(d, "copy \"files\"", "copy \"pipe\"");
        },
        "pipe",
    ),
    (
        "input-non-utf8-name",
        |d| {
            fs::write(
                d.join("inputs")
                    .join(std::ffi::OsStr::from_bytes(b"bad-\xff-name")),
                "x",
            )
            .unwrap();
        },
        "UTF-8",
    ),
    (
        "input-through-symlink-loop",
        |d| {
            std::os::unix::fs::symlink("loop", d.join("loop")).unwrap();
            replace_in_config(d, "input \"inputs\"", "input \"loop/file\"");
        },
        "loop/file",
    ),
    (
        "input-imgraph-folder",
        |d| replace_in_config(d, "input \"inputs\"", "input \".imgraph\""),
        ".imgraph",
    ),
    (
        "input-state-file",
        |d| replace_in_config(d, "input \"inputs\"", "input \".imgraph/state.db\""),
        ".imgraph",
    ),
    (
        "input-store-glob",
        |d| replace_in_config(d, "input \"inputs\"", "input \".imgraph/images/*\""),
        ".imgraph",
    ),
    (
        "copy-imgraph-folder",
        |d| replace_in_config(d, "copy \"files\"", "copy \".imgraph/images\""),
        ".imgraph",
    ),
    (
        "test-input-fifo",
        |d| {
            mkfifo(&d.join("tests/pipe"));
            replace_in_config(d, "input \"tests\"", "input \"tests/pipe\"");
        },
        "tests/pipe",
    ),
    // ---- package lists
    (
        "packages-fifo",
        |d| {
            fs::remove_file(d.join("packages.txt")).unwrap();
            mkfifo(&d.join("packages.txt"));
        },
        "packages.txt",
    ),
    (
        "packages-device",
        |d| {
            fs::remove_file(d.join("packages.txt")).unwrap();
            mknod_null(&d.join("packages.txt"));
        },
        "packages.txt",
    ),
    (
        "packages-socket",
        |d| {
            fs::remove_file(d.join("packages.txt")).unwrap();
            socket(&d.join("packages.txt"));
        },
        "packages.txt",
    ),
    (
        "packages-directory",
        |d| {
            fs::remove_file(d.join("packages.txt")).unwrap();
            fs::create_dir(d.join("packages.txt")).unwrap();
            write(&d.join("packages.txt/x"), "curl\n");
        },
        "packages.txt",
    ),
    (
        "packages-symlink-loop",
        |d| {
            fs::remove_file(d.join("packages.txt")).unwrap();
            std::os::unix::fs::symlink("packages.txt", d.join("packages.txt")).unwrap();
        },
        "packages.txt",
    ),
    // ---- origins (each also changes the source, so the build would run)
    ("origin-empty", |d| origin(d, b""), "origin.tar"),
    (
        "origin-cut-at-a-header-boundary",
        |d| {
            let full = good_tar();
            // 11 of 50 files, ending exactly after an entry: no end-of-archive marker.
            origin(d, &full[..512 * (1 + 2 * 11)]);
        },
        "cut short",
    ),
    (
        "origin-cut-inside-a-file",
        |d| {
            let full = good_tar();
            origin(d, &full[..512 * 20 + 100]);
        },
        "origin.tar",
    ),
    (
        "origin-cut-inside-a-header",
        |d| {
            let full = good_tar();
            origin(d, &full[..512 * 20 + 300]);
        },
        "origin.tar",
    ),
    (
        "origin-garbage",
        |d| origin(d, &[0x55u8; 4096]),
        "origin.tar",
    ),
    (
        "origin-absolute-entry",
        |d| {
            let mut t = tar_bytes(&[(b"/etc/passwd", b'0', b"", b"root\n")]);
            t.extend_from_slice(&[0; 1024]);
            origin(d, &t);
        },
        "/etc/passwd",
    ),
    (
        "origin-dotdot-entry",
        |d| {
            let mut t = tar_bytes(&[(b"../escape", b'0', b"", b"x\n")]);
            t.extend_from_slice(&[0; 1024]);
            origin(d, &t);
        },
        "../escape",
    ),
    (
        "origin-hard-link-out",
        |d| {
            let mut t = tar_bytes(&[(b"etc/shadow", b'1', b"../../etc/shadow", b"")]);
            t.extend_from_slice(&[0; 1024]);
            origin(d, &t);
        },
        "etc/shadow",
    ),
    (
        "origin-gz-that-is-not-gzip",
        |d| {
            // Other bytes than the current origin, or the build would not run.
            let mut tar = good_tar();
            tar.extend_from_slice(&[0; 1024]);
            fs::write(d.join("origin.tar.gz"), tar).unwrap();
            replace_in_config(d, "origin.tar\"", "origin.tar.gz\"");
        },
        "origin.tar.gz",
    ),
    (
        "origin-gz-truncated",
        |d| {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&good_tar()).unwrap();
            let bytes = gz.finish().unwrap();
            fs::write(d.join("origin.tar.gz"), &bytes[..bytes.len() / 2]).unwrap();
            replace_in_config(d, "origin.tar\"", "origin.tar.gz\"");
        },
        "origin.tar.gz",
    ),
    (
        "origin-zst-corrupt",
        |d| {
            let mut bytes = zstd::encode_all(&good_tar()[..], 3).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid..].iter_mut().for_each(|b| *b ^= 0xa5);
            fs::write(d.join("origin.tar.zst"), bytes).unwrap();
            replace_in_config(d, "origin.tar\"", "origin.tar.zst\"");
        },
        "origin.tar.zst",
    ),
    (
        "origin-unknown-format",
        |d| {
            fs::write(d.join("origin.img"), [7u8; 2048]).unwrap();
            replace_in_config(d, "origin.tar\"", "origin.img\"");
        },
        "origin.img",
    ),
    (
        "origin-fifo",
        |d| {
            fs::remove_file(d.join("origin.tar")).unwrap();
            mkfifo(&d.join("origin.tar"));
        },
        "origin.tar",
    ),
    (
        "origin-device",
        |d| {
            fs::remove_file(d.join("origin.tar")).unwrap();
            mknod_null(&d.join("origin.tar"));
        },
        "origin.tar",
    ),
    (
        "origin-symlink-loop",
        |d| {
            fs::remove_file(d.join("origin.tar")).unwrap();
            std::os::unix::fs::symlink("origin.tar", d.join("origin.tar")).unwrap();
        },
        "origin.tar",
    ),
    // ---- the state file
    (
        "state-not-a-database",
        |d| {
            fs::write(
                d.join(".imgraph/state.db"),
                "these are not the pages you are looking for\n".repeat(200),
            )
            .unwrap();
        },
        "state.db",
    ),
    (
        "state-newer-schema",
        |d| {
            let c = rusqlite_free_user_version(d);
            assert!(c);
        },
        "newer imgraph",
    ),
];

/// Sets `PRAGMA user_version` of the state file to 999 by editing its header (offset 60,
/// big-endian), as a newer imgraph would have left it.
fn rusqlite_free_user_version(d: &Path) -> bool {
    let path = d.join(".imgraph/state.db");
    let mut bytes = fs::read(&path).unwrap();
    bytes[60..64].copy_from_slice(&999u32.to_be_bytes());
    fs::write(&path, bytes).is_ok()
}

#[test]
fn every_bad_input_fails_clearly_and_changes_nothing() {
    assert!(CASES.len() >= 40, "only {} cases", CASES.len());
    let template = template();
    let mut failures = Vec::new();
    for (name, setup, needle) in CASES {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("project");
        // `cp -a`: the state and store come along (common::copy_dir leaves them out).
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(template)
            .arg(&dir)
            .status()
            .unwrap();
        assert!(copied.success());
        setup(&dir);
        let state = dir.join(".imgraph/state.db");
        let before = fs::read(&state).ok();
        let out = imgraph(&dir)
            .arg("apply")
            .timeout(std::time::Duration::from_secs(60))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let flat: String = err
            .split_whitespace()
            .filter(|w| *w != "│" && *w != "|")
            .collect::<Vec<_>>()
            .join(" ");
        let mut problems = Vec::new();
        if out.status.code() != Some(1) {
            problems.push(format!("exit {:?}", out.status.code()));
        }
        if err.contains("panicked") {
            problems.push("panicked".into());
        }
        // A config error is a header ("failed to load imgraph.kdl: 1 error") and its
        // diagnostic; anything else is one message with its causes.
        // Off a terminal the report is plain ASCII: `x` marks an error (`×` on one).
        let marks = err
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                t.starts_with("× ") || t.starts_with("x ")
            })
            .count();
        if !(marks == 1 || (marks == 2 && flat.contains(": 1 error"))) {
            problems.push(format!("{marks} errors"));
        }
        if !flat.contains(needle) {
            problems.push(format!("does not name `{needle}`"));
        }
        if fs::read(&state).ok() != before {
            problems.push("the state file changed".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}\n{err}", problems.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
