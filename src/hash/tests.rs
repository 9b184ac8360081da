use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::config::model::{Input, InputKind, RelPath, Trigger};

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
}

fn set_mtime(root: &Path, rel: &str, when: SystemTime) {
    fs::File::options()
        .write(true)
        .open(root.join(rel))
        .unwrap()
        .set_modified(when)
        .unwrap();
}

fn hour_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

fn path_input(pattern: &str, trigger: Trigger, exclude: &[&str]) -> Input {
    Input {
        kind: InputKind::Path {
            pattern: pattern.to_owned(),
        },
        trigger,
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
        span: (0, 0).into(),
    }
}

fn probe_input(name: &str, command: &str) -> Input {
    Input {
        kind: InputKind::Probe {
            name: name.to_owned(),
            command: command.to_owned(),
            place: crate::config::model::ProbePlace::Project,
            network: crate::config::model::Network::None,
            timeout: None,
            env: Default::default(),
        },
        trigger: Trigger::Rollup,
        exclude: Vec::new(),
        span: (0, 0).into(),
    }
}

/// What a node with these declared inputs (and builder reads) reads.
fn declared<'a>(inputs: &'a [Input], reads: &[&str]) -> NodeInputs<'a> {
    NodeInputs {
        declared: inputs,
        builder_reads: reads.iter().map(|r| RelPath(r.to_string())).collect(),
        ..NodeInputs::default()
    }
}

/// Manifest of one immediate path input, with a fresh hasher and no stat cache.
fn manifest_of(root: &Path, pattern: &str, exclude: &[&str]) -> Manifest {
    let cache = StatCache::empty();
    Hasher::new(root, &cache)
        .manifest(&declared(
            &[path_input(pattern, Trigger::Immediate, exclude)],
            &[],
        ))
        .unwrap()
}

/// Every entry's path, folders included.
fn paths(m: &Manifest) -> Vec<&str> {
    m.entries.iter().map(|e| e.path.as_str()).collect()
}

/// The paths of files and links (not folders).
fn leaves(m: &Manifest) -> Vec<&str> {
    m.entries
        .iter()
        .filter(|e| e.kind != EntryKind::Dir)
        .map(|e| e.path.as_str())
        .collect()
}

fn file_digest(root: &Path, rel: &str) -> String {
    let cache = StatCache::empty();
    Hasher::new(root, &cache).tree_digest(rel).unwrap()
}

fn assert_digest_format(d: &str) {
    let hex = d
        .strip_prefix("b3v1:")
        .unwrap_or_else(|| panic!("no b3v1 prefix: {d}"));
    assert_eq!(hex.len(), 64, "{d}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{d}"
    );
}

#[test]
fn content_change_changes_digest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/a.sh", "echo one\n");
    let before = manifest_of(dir.path(), "scripts", &[]);
    write(dir.path(), "scripts/a.sh", "echo two\n");
    let after = manifest_of(dir.path(), "scripts", &[]);
    let entry = |m: &Manifest| m.get("scripts/a.sh").unwrap().digest.clone();
    assert_ne!(entry(&before), entry(&after));
    assert_ne!(before.digest(), after.digest());
}

#[test]
fn mtime_only_change_keeps_digest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "same\n");
    let before = file_digest(dir.path(), "a.txt");
    set_mtime(dir.path(), "a.txt", hour_ago());
    assert_eq!(before, file_digest(dir.path(), "a.txt"));
}

#[test]
fn every_permission_bit_counts_beside_the_content() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "conf/acme.conf", "x=1\n");
    let chmod = |rel: &str, mode: u32| {
        fs::set_permissions(dir.path().join(rel), fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod("conf/acme.conf", 0o644);
    chmod("conf", 0o755);
    let before = manifest_of(dir.path(), "conf", &[]);
    assert_eq!(before.get("conf/acme.conf").unwrap().mode, Some(0o644));
    assert_eq!(before.get("conf").unwrap().mode, Some(0o755));
    let mut seen = vec![before.digest()];
    for (rel, mode) in [
        ("conf/acme.conf", 0o600),
        ("conf/acme.conf", 0o4600),
        ("conf", 0o700),
        ("conf", 0o1700),
    ] {
        chmod(rel, mode);
        let m = manifest_of(dir.path(), "conf", &[]);
        assert_eq!(m.get(rel).unwrap().mode, Some(mode));
        // The content digest stays: a plan can tell a mode change from an edit.
        assert_eq!(
            m.get(rel).unwrap().digest,
            before.get(rel).unwrap().digest,
            "{rel}"
        );
        assert!(!seen.contains(&m.digest()), "{rel} {mode:o}");
        seen.push(m.digest());
    }
    // The same goes for a local origin folder's digest.
    let tree = file_digest(dir.path(), "conf");
    chmod("conf/acme.conf", 0o644);
    assert_ne!(tree, file_digest(dir.path(), "conf"));
}

#[test]
fn symlink_is_hashed_as_its_target_string_and_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.txt", "v1\n");
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("conf")).unwrap();
    let target = outside.path().join("secret.txt");
    symlink(&target, dir.path().join("conf/link")).unwrap();

    let m = manifest_of(dir.path(), "conf", &[]);
    let entry = m.get("conf/link").unwrap();
    assert_eq!(entry.kind, EntryKind::Symlink);
    assert_eq!(entry.digest, digest::symlink(target.as_os_str()));

    // The target's content is not an input.
    write(outside.path(), "secret.txt", "v2, much longer\n");
    assert_eq!(manifest_of(dir.path(), "conf", &[]), m);

    // The target string is.
    fs::remove_file(dir.path().join("conf/link")).unwrap();
    symlink(
        outside.path().join("other.txt"),
        dir.path().join("conf/link"),
    )
    .unwrap();
    assert_ne!(manifest_of(dir.path(), "conf", &[]).digest(), m.digest());
}

#[test]
fn symlink_to_directory_is_not_walked() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "real/a.txt", "a");
    fs::create_dir_all(dir.path().join("tree")).unwrap();
    symlink("../real", dir.path().join("tree/alias")).unwrap();
    let m = manifest_of(dir.path(), "tree", &[]);
    assert_eq!(paths(&m), ["tree", "tree/alias"]);
    assert_eq!(m.entries[1].kind, EntryKind::Symlink);
}

#[test]
fn rename_inside_directory_changes_tree_digest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base/etc/a.conf", "x=1\n");
    write(dir.path(), "base/etc/b.conf", "y=2\n");
    let before = file_digest(dir.path(), "base");
    fs::rename(
        dir.path().join("base/etc/b.conf"),
        dir.path().join("base/etc/c.conf"),
    )
    .unwrap();
    let after = file_digest(dir.path(), "base");
    assert_ne!(before, after);
    assert_digest_format(&after);
    // Same content, same names: same digest, wherever the tree lives in the project.
    write(dir.path(), "copy/etc/a.conf", "x=1\n");
    write(dir.path(), "copy/etc/c.conf", "y=2\n");
    assert_eq!(after, file_digest(dir.path(), "copy"));
}

#[test]
fn tree_digest_of_file_is_its_file_digest() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bases/debian.tar", "not really a tarball");
    let m = manifest_of(dir.path(), "bases/debian.tar", &[]);
    assert_eq!(
        file_digest(dir.path(), "bases/debian.tar"),
        m.entries[0].digest
    );
}

#[test]
fn exclude_by_name_anywhere_and_by_path() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "conf/app.yml", "a");
    write(dir.path(), "conf/app.yml.bak", "b");
    write(dir.path(), "conf/deep/x.bak", "c");
    write(dir.path(), "conf/cache/blob", "d");
    write(dir.path(), "conf/deep/cache/keep", "e");

    let by_name = manifest_of(dir.path(), "conf", &["*.bak"]);
    assert_eq!(
        leaves(&by_name),
        ["conf/app.yml", "conf/cache/blob", "conf/deep/cache/keep"]
    );

    // With a `/`, the pattern is project-relative: only conf/cache, not conf/deep/cache.
    let by_path = manifest_of(dir.path(), "conf", &["conf/cache"]);
    assert_eq!(
        leaves(&by_path),
        [
            "conf/app.yml",
            "conf/app.yml.bak",
            "conf/deep/cache/keep",
            "conf/deep/x.bak"
        ]
    );

    // Excludes apply to globs too.
    let glob = manifest_of(dir.path(), "conf/**", &["cache", "*.bak"]);
    assert_eq!(leaves(&glob), ["conf/app.yml"]);
    // An excluded folder is no entry either; the others are.
    assert_eq!(
        paths(&manifest_of(dir.path(), "conf", &["cache"])),
        [
            "conf",
            "conf/app.yml",
            "conf/app.yml.bak",
            "conf/deep",
            "conf/deep/x.bak"
        ]
    );
}

#[test]
fn glob_matches_below_its_literal_prefix_only() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/a.sh", "a");
    write(dir.path(), "scripts/b.txt", "b");
    write(dir.path(), "scripts/sub/c.sh", "c");
    write(dir.path(), "other/d.sh", "d");
    // A name manifests cannot hold, outside the glob's prefix: walking the whole project
    // would fail on it.
    let bad = std::ffi::OsStr::from_bytes(b"other/bad-\xff");
    fs::write(dir.path().join(bad), "x").unwrap();

    assert_eq!(
        paths(&manifest_of(dir.path(), "scripts/*.sh", &[])),
        ["scripts/a.sh"]
    );
    // Folders a glob only passes through are no entries.
    assert_eq!(
        paths(&manifest_of(dir.path(), "./scripts/**/*.sh", &[])),
        ["scripts/a.sh", "scripts/sub/c.sh"]
    );
    // A glob that matches a directory takes it and everything below it.
    assert_eq!(
        paths(&manifest_of(dir.path(), "scripts/s*", &[])),
        ["scripts/sub", "scripts/sub/c.sh"]
    );
    // A glob over a missing folder matches nothing.
    assert!(manifest_of(dir.path(), "missing/*.sh", &[])
        .entries
        .is_empty());

    let cache = StatCache::empty();
    let err = Hasher::new(dir.path(), &cache)
        .manifest(&declared(
            &[path_input("*.sh", Trigger::Immediate, &[])],
            &[],
        ))
        .unwrap_err();
    assert!(matches!(err, HashError::Io { .. }), "{err:?}");

    assert_eq!(walk::literal_prefix("roles/web/*/tasks/*.yml"), "roles/web");
    assert_eq!(walk::literal_prefix("{a,b}/x"), "");
}

#[test]
fn project_root_skips_git_and_imgraph() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "imgraph.kdl", "imgraph version=1\n");
    write(dir.path(), ".git/HEAD", "ref: refs/heads/main\n");
    write(dir.path(), ".imgraph/state.db", "db");
    write(
        dir.path(),
        "sub/.git/kept",
        "only the root ones are skipped",
    );
    let m = manifest_of(dir.path(), ".", &[]);
    assert_eq!(
        paths(&m),
        ["imgraph.kdl", "sub", "sub/.git", "sub/.git/kept"]
    );

    // imgraph's own folders, wherever the config puts them, are skipped too.
    write(dir.path(), "var/state/state.db", "db");
    write(dir.path(), "var/keep", "k");
    let cache = StatCache::empty();
    let m = Hasher::new(dir.path(), &cache)
        .skipping(["var/state".to_string()])
        .manifest(&declared(&[path_input(".", Trigger::Immediate, &[])], &[]))
        .unwrap();
    assert!(paths(&m).contains(&"var/keep"));
    assert!(!paths(&m).iter().any(|p| p.starts_with("var/state")));
}

#[test]
fn empty_directories_are_entries_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "conf/a", "a");
    let before = manifest_of(dir.path(), "conf", &[]);
    fs::create_dir_all(dir.path().join("conf/empty/deeper")).unwrap();
    let after = manifest_of(dir.path(), "conf", &[]);
    assert_eq!(
        paths(&after),
        ["conf", "conf/a", "conf/empty", "conf/empty/deeper"]
    );
    assert_eq!(after.get("conf/empty").unwrap().kind, EntryKind::Dir);
    assert_ne!(after.digest(), before.digest());
    // And for an origin folder.
    write(dir.path(), "base/etc/hostname", "h");
    let tree = file_digest(dir.path(), "base");
    fs::create_dir_all(dir.path().join("base/proc")).unwrap();
    assert_ne!(tree, file_digest(dir.path(), "base"));
}

#[test]
fn immediate_wins_over_rollup_for_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "packages/base.txt", "curl\n");
    write(dir.path(), "packages/extra.txt", "jq\n");
    let packages = Input {
        kind: InputKind::Packages {
            path: RelPath("packages/base.txt".into()),
        },
        trigger: Trigger::Rollup,
        exclude: Vec::new(),
        span: (0, 0).into(),
    };
    let cache = StatCache::empty();
    let hasher = Hasher::new(dir.path(), &cache);
    let both = [
        packages.clone(),
        path_input("packages", Trigger::Immediate, &[]),
    ];
    let m = hasher.manifest(&declared(&both, &[])).unwrap();
    assert_eq!(
        paths(&m),
        ["packages", "packages/base.txt", "packages/extra.txt"]
    );
    assert!(m.entries.iter().all(|e| e.trigger == Trigger::Immediate));

    let m = hasher
        .manifest(&declared(std::slice::from_ref(&packages), &[]))
        .unwrap();
    assert_eq!(m.entries[0].trigger, Trigger::Rollup);

    // Files the builder reads are immediate whatever the inputs say.
    let m = hasher
        .manifest(&declared(&[packages], &["packages/base.txt"]))
        .unwrap();
    assert_eq!(m.entries.len(), 1);
    assert_eq!(m.entries[0].trigger, Trigger::Immediate);
}

#[test]
fn stat_cache_hit_on_second_run() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        let rel = format!("conf/{i}.txt");
        write(dir.path(), &rel, &format!("{i}"));
        set_mtime(dir.path(), &rel, hour_ago());
    }
    let input = [path_input("conf", Trigger::Immediate, &[])];

    let cold = StatCache::empty();
    let first = Hasher::new(dir.path(), &cold)
        .manifest(&declared(&input, &[]))
        .unwrap();
    assert_eq!(cold.stats(), CacheStats { hits: 0, misses: 5 });
    let updates = cold.take_updates();
    assert_eq!(updates.len(), 5);
    assert!(cold.take_updates().is_empty());

    let warm = StatCache::new(updates.into_iter().collect::<StatMap>());
    let second = Hasher::new(dir.path(), &warm)
        .manifest(&declared(&input, &[]))
        .unwrap();
    assert_eq!(warm.stats(), CacheStats { hits: 5, misses: 0 });
    assert!(warm.take_updates().is_empty());
    assert_eq!(first, second);
}

/// A cache entry matching `rel`'s current metadata, with a digest no file can have, so a
/// test can tell a reused digest from a recomputed one.
fn entry_for(root: &Path, rel: &str, recorded_at_ns: i128) -> (String, CachedStat) {
    let md = fs::symlink_metadata(root.join(rel)).unwrap();
    let stat = cache::FileStat::of(&md);
    (
        rel.to_owned(),
        CachedStat {
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            ctime_ns: stat.ctime_ns,
            inode: stat.inode,
            mode: stat.mode,
            digest: "b3v1:cached".to_owned(),
            recorded_at_ns,
        },
    )
}

fn digest_with(root: &Path, cache: &StatCache, rel: &str) -> String {
    Hasher::new(root, cache).tree_digest(rel).unwrap()
}

/// A file written just now is read and hashed but not recorded: its entry would be racy
/// at every lookup, so the cache file is not rewritten for it. An old file is recorded.
#[test]
fn a_file_modified_within_the_racy_window_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "new.txt", "new\n");
    write(dir.path(), "old.txt", "old\n");
    set_mtime(dir.path(), "old.txt", hour_ago());
    let cache = StatCache::empty();
    assert_eq!(
        digest_with(dir.path(), &cache, "new.txt"),
        file_digest(dir.path(), "new.txt")
    );
    assert_eq!(
        digest_with(dir.path(), &cache, "old.txt"),
        file_digest(dir.path(), "old.txt")
    );
    assert_eq!(cache.stats(), CacheStats { hits: 0, misses: 2 });
    let recorded: Vec<String> = cache.take_updates().into_iter().map(|(p, _)| p).collect();
    assert_eq!(recorded, ["old.txt"]);
}

#[test]
fn stat_cache_reuses_matching_entry_and_rehashes_racy_or_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "content\n");
    set_mtime(dir.path(), "a.txt", hour_ago());
    let real = file_digest(dir.path(), "a.txt");

    let (path, entry) = entry_for(dir.path(), "a.txt", i128::MAX / 2);
    let trusted = StatCache::new(StatMap::from_iter([(path.clone(), entry.clone())]));
    assert_eq!(digest_with(dir.path(), &trusted, "a.txt"), "b3v1:cached");
    assert_eq!(trusted.stats(), CacheStats { hits: 1, misses: 0 });

    // Racy: recorded in the same instant the file was modified.
    let racy_entry = CachedStat {
        recorded_at_ns: entry.mtime_ns,
        ..entry.clone()
    };
    let racy = StatCache::new(StatMap::from_iter([(path.clone(), racy_entry)]));
    assert_eq!(digest_with(dir.path(), &racy, "a.txt"), real);
    assert_eq!(racy.stats(), CacheStats { hits: 0, misses: 1 });
    let updates = racy.take_updates();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].1.digest, real);

    // Size differs.
    let resized = CachedStat {
        size: entry.size + 1,
        ..entry.clone()
    };
    let changed = StatCache::new(StatMap::from_iter([(path.clone(), resized)]));
    assert_eq!(digest_with(dir.path(), &changed, "a.txt"), real);
    assert_eq!(changed.stats(), CacheStats { hits: 0, misses: 1 });

    // chmod changes the mode: re-hashed.
    fs::set_permissions(dir.path().join("a.txt"), fs::Permissions::from_mode(0o755)).unwrap();
    let stale = StatCache::new(StatMap::from_iter([(path, entry)]));
    assert_ne!(digest_with(dir.path(), &stale, "a.txt"), "b3v1:cached");
    assert_eq!(stale.stats(), CacheStats { hits: 0, misses: 1 });
}

#[test]
fn hasher_memo_hashes_shared_file_once() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "shared.sh", "echo\n");
    let cache = StatCache::empty();
    let hasher = Hasher::new(dir.path(), &cache);
    let input = [path_input("shared.sh", Trigger::Immediate, &[])];
    hasher.manifest(&declared(&input, &[])).unwrap();
    hasher.manifest(&declared(&input, &[])).unwrap();
    assert_eq!(cache.stats().misses, 1);
}

#[test]
fn probe_stdout_is_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = StatCache::empty();
    let m = Hasher::new(dir.path(), &cache)
        .manifest(&declared(&[probe_input("apt-index", "echo hello")], &[]))
        .unwrap();
    let entry = m.get("probe:apt-index").unwrap();
    assert_eq!(entry.kind, EntryKind::Probe);
    assert_eq!(entry.trigger, Trigger::Rollup);
    assert_digest_format(&entry.digest);

    let timeout = Duration::from_secs(30);
    let same = run_probe(dir.path(), "p", "printf 'hello\\n'", &[], timeout).unwrap();
    let other = run_probe(dir.path(), "p", "echo goodbye", &[], timeout).unwrap();
    assert_eq!(entry.digest, same);
    assert_ne!(entry.digest, other);

    // Runs in the project folder.
    write(dir.path(), "marker", "here");
    let in_root = run_probe(dir.path(), "p", "cat marker", &[], timeout).unwrap();
    assert_eq!(
        in_root,
        run_probe(dir.path(), "p", "printf here", &[], timeout).unwrap()
    );
}

#[test]
fn failing_probe_names_itself_and_shows_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let cache = StatCache::empty();
    let failing = [probe_input(
        "apt-index",
        "echo partial; echo 'mirror down' >&2; exit 3",
    )];
    let err = Hasher::new(dir.path(), &cache)
        .manifest(&declared(&failing, &[]))
        .unwrap_err();
    match &err {
        HashError::Probe { name, detail } => {
            assert_eq!(name, "apt-index");
            assert!(detail.contains("status 3"), "{detail}");
            assert!(detail.contains("mirror down"), "{detail}");
        }
        other => panic!("expected a probe error, got {other:?}"),
    }
    assert!(err.to_string().contains("apt-index"));
}

#[test]
fn probe_timeout_kills_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = run_probe(
        dir.path(),
        "slow",
        "sleep 30 | cat",
        &[],
        Duration::from_millis(200),
    )
    .unwrap_err();
    match err {
        HashError::Probe { name, detail } => {
            assert_eq!(name, "slow");
            assert!(detail.contains("timed out"), "{detail}");
        }
        other => panic!("expected a probe error, got {other:?}"),
    }
}

#[test]
fn digest_parts_is_length_prefixed_and_domain_separated() {
    let ab_c = digest_parts("key", &["ab", "c"]);
    assert_ne!(ab_c, digest_parts("key", &["a", "bc"]));
    assert_ne!(ab_c, digest_parts("key", &["abc"]));
    assert_ne!(ab_c, digest_parts("key", &["ab", "c", ""]));
    assert_ne!(ab_c, digest_parts("other", &["ab", "c"]));
    assert_eq!(ab_c, digest_parts("key", &["ab", "c"]));
    assert_digest_format(&ab_c);
}

#[test]
fn every_digest_has_the_format_prefix() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "conf/a", "a");
    symlink("a", dir.path().join("conf/l")).unwrap();
    let cache = StatCache::empty();
    let inputs = [
        path_input("conf", Trigger::Immediate, &[]),
        probe_input("p", "echo"),
    ];
    let m = Hasher::new(dir.path(), &cache)
        .manifest(&declared(&inputs, &[]))
        .unwrap();
    assert_eq!(m.entries.len(), 4);
    for entry in &m.entries {
        assert_digest_format(&entry.digest);
    }
    assert_digest_format(&m.digest());
    assert_digest_format(&Manifest::default().digest());
    assert_digest_format(&file_digest(dir.path(), "conf"));
    assert!(FORMAT == "b3v1");
}

#[test]
fn paths_outside_the_project_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "x.sh", "x");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "in/a", "a");
    symlink(outside.path(), dir.path().join("escape")).unwrap();
    let cache = StatCache::empty();
    let hasher = Hasher::new(dir.path(), &cache);
    for pattern in [
        "../x.sh",
        "in/../../x.sh",
        "/etc/passwd",
        "escape/x.sh",
        "escape/*.sh",
    ] {
        let err = hasher
            .manifest(&declared(
                &[path_input(pattern, Trigger::Immediate, &[])],
                &[],
            ))
            .unwrap_err();
        assert!(
            matches!(err, HashError::OutsideProject { .. }),
            "{pattern}: {err:?}"
        );
    }
    assert!(matches!(
        hasher.tree_digest("../x.sh"),
        Err(HashError::OutsideProject { .. })
    ));
    // `..` that stays inside is fine.
    assert_eq!(
        paths(&manifest_of(dir.path(), "in/../in", &[])),
        ["in", "in/a"]
    );
}

#[test]
fn missing_input_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = StatCache::empty();
    let missing = [path_input("scripts/nope.sh", Trigger::Immediate, &[])];
    let err = Hasher::new(dir.path(), &cache)
        .manifest(&declared(&missing, &[]))
        .unwrap_err();
    match &err {
        HashError::Io { path, source } => {
            assert_eq!(path, Path::new("scripts/nope.sh"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an io error, got {other:?}"),
    }
}

#[test]
fn bad_glob_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = StatCache::empty();
    let err = Hasher::new(dir.path(), &cache)
        .manifest(&declared(
            &[path_input("conf/[a", Trigger::Immediate, &[])],
            &[],
        ))
        .unwrap_err();
    assert!(
        matches!(&err, HashError::Glob { pattern, .. } if pattern == "conf/[a"),
        "{err:?}"
    );
}

#[test]
fn manifest_round_trips_through_json_with_kebab_case_names() {
    let m = Manifest {
        format: MANIFEST_FORMAT,
        entries: vec![
            ManifestEntry {
                path: "conf".into(),
                digest: digest::dir(),
                trigger: Trigger::Immediate,
                kind: EntryKind::Dir,
                mode: Some(0o750),
                via: Via::Copy,
                packages: None,
            },
            ManifestEntry {
                path: "probe:apt".into(),
                digest: digest_parts("t", &[]),
                trigger: Trigger::Rollup,
                kind: EntryKind::Probe,
                mode: None,
                via: Via::Input,
                packages: None,
            },
        ],
    };
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains(r#""trigger":"rollup""#), "{json}");
    assert!(json.contains(r#""kind":"probe""#), "{json}");
    assert!(json.contains(r#""via":"copy""#), "{json}");
    let back: Manifest = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.digest(), m.digest());
    // A record written before formats were numbered reads as format 1.
    let old: Manifest = serde_json::from_str(r#"{"entries":[]}"#).unwrap();
    assert_eq!(old.format, 1);
}

#[test]
fn triggers_and_ways_of_declaring_are_not_hashed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "conf/a.conf", "a");
    write(dir.path(), "conf/a.bak", "b");
    let cache = StatCache::empty();
    let hasher = Hasher::new(dir.path(), &cache);
    let digest_of = |inputs: &[Input], reads: &[&str]| {
        hasher.manifest(&declared(inputs, reads)).unwrap().digest()
    };
    let plain = digest_of(&[path_input("conf", Trigger::Immediate, &[])], &[]);
    // The same line twice, the same files through a glob plus an exclude that takes
    // nothing away, another trigger, or a copy of the same folder: the same manifest.
    let twice = [
        path_input("conf", Trigger::Immediate, &[]),
        path_input("conf", Trigger::Immediate, &[]),
    ];
    assert_eq!(digest_of(&twice, &[]), plain);
    assert_eq!(
        digest_of(&[path_input("conf", Trigger::Immediate, &["*.tmp"])], &[]),
        plain
    );
    assert_eq!(
        digest_of(&[path_input("conf", Trigger::Rollup, &[])], &[]),
        plain
    );
    assert_eq!(digest_of(&[], &["conf"]), plain);
    // An exclude that does take a file away is another manifest.
    assert_ne!(
        digest_of(&[path_input("conf", Trigger::Immediate, &["*.bak"])], &[]),
        plain
    );
}

#[test]
fn words_of_commands_that_name_project_paths_are_inputs() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "scripts/x.sh", "echo x\n");
    write(dir.path(), "tools/gen.py", "print(1)\n");
    write(dir.path(), "deliver.sh", "echo d\n");
    write(dir.path(), "data/one", "1");
    write(dir.path(), ".imgraph/state.db", "db");
    write(dir.path(), "out.txt", "an output");
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "abs.sh", "a");
    let abs = outside.path().join("abs.sh");
    let command = format!(
        "sh scripts/x.sh && python3 tools/gen.py --out x && ./deliver.sh; cp -r data \
         \"$IMGRAPH_ROOT/opt\"; sh {} ../x.sh *.sh .imgraph/state.db . > out.txt",
        abs.display()
    );
    let cache = StatCache::empty();
    let m = Hasher::new(dir.path(), &cache)
        .manifest(&NodeInputs {
            commands: vec![&command],
            ..NodeInputs::default()
        })
        .unwrap();
    assert_eq!(
        paths(&m),
        [
            "data",
            "data/one",
            "deliver.sh",
            "scripts/x.sh",
            "tools/gen.py"
        ]
    );
    assert!(m.entries.iter().all(|e| e.via == Via::Run));
    assert!(m.entries.iter().all(|e| e.trigger == Trigger::Immediate));

    // A path declared as well shows as declared; the manifest digest is the same.
    let both = Hasher::new(dir.path(), &cache)
        .manifest(&NodeInputs {
            declared: &[path_input("scripts/x.sh", Trigger::Immediate, &[])],
            commands: vec![&command],
            ..NodeInputs::default()
        })
        .unwrap();
    assert_eq!(both.get("scripts/x.sh").unwrap().via, Via::Input);
    assert_eq!(both.digest(), m.digest());

    // Probe commands: their words are inputs with the probe's trigger.
    let probe = [probe_input("p", "cat scripts/x.sh")];
    let m = Hasher::new(dir.path(), &cache)
        .manifest(&declared(&probe, &[]))
        .unwrap();
    let entry = m.get("scripts/x.sh").unwrap();
    assert_eq!((entry.via, entry.trigger), (Via::Run, Trigger::Rollup));
}

#[test]
fn env_values_are_hashed_never_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cache = StatCache::empty();
    let digest_with_env = |vars: &[(&str, &str)]| {
        let m = Hasher::new(dir.path(), &cache)
            .with_env(vars.iter().map(|(k, v)| (k.into(), v.into())))
            .manifest(&NodeInputs {
                env: vec!["APP_FLAVOR".to_string()],
                ..NodeInputs::default()
            })
            .unwrap();
        let entry = m.get("env:APP_FLAVOR").unwrap().clone();
        assert_eq!(entry.kind, EntryKind::Env);
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("secret-flavour"), "{json}");
        entry.digest
    };
    let unset = digest_with_env(&[]);
    let empty = digest_with_env(&[("APP_FLAVOR", "")]);
    let value = digest_with_env(&[("APP_FLAVOR", "secret-flavour")]);
    let other = digest_with_env(&[("APP_FLAVOR", "other"), ("UNRELATED", "x")]);
    assert_ne!(unset, empty);
    assert_ne!(empty, value);
    assert_ne!(value, other);
    assert_eq!(
        value,
        digest_with_env(&[("APP_FLAVOR", "secret-flavour"), ("UNRELATED", "y")])
    );
}

#[test]
fn origin_folders_are_listed_entry_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bases/root/etc/passwd", "root:x:0:0\n");
    fs::create_dir_all(dir.path().join("bases/root/proc")).unwrap();
    write(dir.path(), "bases/root.tar", "a tarball");
    let cache = StatCache::empty();
    let hasher = Hasher::new(dir.path(), &cache);
    let origin = |path: &str| {
        hasher
            .manifest(&NodeInputs {
                origin: Some(RelPath(path.into())),
                ..NodeInputs::default()
            })
            .unwrap()
    };
    let m = origin("bases/root");
    // Not the folder itself: an image does not keep the origin's own mode.
    assert_eq!(
        paths(&m),
        ["bases/root/etc", "bases/root/etc/passwd", "bases/root/proc"]
    );
    assert!(m.entries.iter().all(|e| e.via == Via::Origin));
    assert!(origin("bases/root.tar").entries.is_empty());
}

#[test]
fn large_files_hash_like_small_ones() {
    // Files above the parallel threshold take another read path; the digest must not
    // depend on which one.
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
    fs::write(dir.path().join("big"), &big).unwrap();
    let mut h = blake3::Hasher::new();
    h.update(&(15u64).to_le_bytes());
    h.update(b"imgraph-file-v2");
    h.update(&(4u64).to_le_bytes());
    h.update(b"file");
    h.update(&big);
    let expected = format!("b3v1:{}", h.finalize().to_hex());
    assert_eq!(file_digest(dir.path(), "big"), expected);
}
