use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::*;

const STATUS: &str = "\
Package: base-files
Essential: yes
Status: install ok installed
Priority: required
Architecture: amd64
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy.
 .
 More text.

Package: libssl3
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: openssl (3.0.11-1~deb12u2)
Version: 3.0.11-1~deb12u2

Package: libssl3
Status: install ok installed
Architecture: i386
Source: openssl
Version: 3.0.11-1~deb12u2

Package: nginx-old
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: half
Status: install ok half-configured
Architecture: amd64
Version: 2.0
";

#[test]
fn dpkg_status_lists_installed_packages_only() {
    let inv = Inventory::read(&DatabaseFiles {
        dpkg_status: Some(STATUS.as_bytes().to_vec()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(inv.managers, vec![Manager::Dpkg]);
    let got: Vec<(&str, &str, &str, Option<&str>)> = inv
        .packages
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.version.as_str(),
                p.arch.as_str(),
                p.source.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("base-files", "12.4+deb12u5", "amd64", None),
            ("libssl3", "3.0.11-1~deb12u2", "amd64", Some("openssl")),
            ("libssl3", "3.0.11-1~deb12u2", "i386", Some("openssl")),
        ]
    );
}

#[test]
fn a_broken_status_file_is_an_error_naming_the_line() {
    let err = Inventory::read(&DatabaseFiles {
        dpkg_status: Some(b"Package: a\nStatus: install ok installed\nno colon here\n".to_vec()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
    let err = Inventory::read(&DatabaseFiles {
        dpkg_status: Some(b"Package: a\nStatus: install ok installed\n".to_vec()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("`a` has no `Version`"), "{err}");
}

#[test]
fn apk_installed_database_is_read() {
    let db =
        "C:Q1abc=\nP:musl\nV:1.2.5-r0\nA:x86_64\nS:100\no:musl\nF:lib\nR:ld-musl-x86_64.so.1\n\n\
              P:busybox-binsh\nV:1.36.1-r29\nA:x86_64\no:busybox\n\n";
    let inv = Inventory::read(&DatabaseFiles {
        apk_installed: Some(db.as_bytes().to_vec()),
        os_release: Some(b"NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.1\n".to_vec()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(inv.managers, vec![Manager::Apk]);
    assert_eq!(inv.os.id.as_deref(), Some("alpine"));
    assert_eq!(inv.os.version_id.as_deref(), Some("3.20.1"));
    let names: Vec<_> = inv
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str(), p.source.as_deref()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("busybox-binsh", "1.36.1-r29", Some("busybox")),
            ("musl", "1.2.5-r0", None)
        ]
    );
}

#[test]
fn no_database_gives_an_empty_inventory() {
    let inv = Inventory::read(&DatabaseFiles::default()).unwrap();
    assert!(inv.managers.is_empty() && inv.packages.is_empty());
}

#[test]
fn os_release_values_may_be_quoted() {
    let os = parse_os_release(
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID='12'\n# c\n",
    );
    assert_eq!(
        os.pretty_name.as_deref(),
        Some("Debian GNU/Linux 12 (bookworm)")
    );
    assert_eq!(os.id.as_deref(), Some("debian"));
    assert_eq!(os.version_id.as_deref(), Some("12"));
}

#[test]
fn versions_follow_dpkg_order() {
    use Ordering::*;
    let cases = [
        ("1.0", "1.0", Equal),
        ("1.0", "1.1", Less),
        ("1.10", "1.9", Greater),
        ("1.0~rc1", "1.0", Less),
        ("1.0", "1.0+deb12u1", Less),
        ("1:0.9", "2.0", Greater),
        ("3.0.11-1~deb12u2", "3.0.15-1~deb12u1", Less),
        ("5.36.0-7+deb12u3", "5.36.0-7+deb12u4", Less),
        ("1.2.3-r4", "1.2.3-r10", Less),
        ("1.0a", "1.0", Greater),
        ("1.0-1", "1.0-1", Equal),
        ("007", "7", Equal),
        ("2.36-9+deb12u14", "2.36-9+deb12u9", Greater),
    ];
    for (a, b, want) in cases {
        assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
    }
}

fn pkg(name: &str, version: &str) -> Package {
    Package {
        manager: Manager::Dpkg,
        name: name.into(),
        version: version.into(),
        arch: "amd64".into(),
        source: None,
    }
}

#[test]
fn package_diff_names_added_removed_upgraded_and_downgraded() {
    let old = vec![
        pkg("a", "1.0"),
        pkg("b", "1.0"),
        pkg("c", "2.0"),
        pkg("d", "1"),
    ];
    let new = vec![
        pkg("a", "1.0"),
        pkg("b", "1.1"),
        pkg("c", "1.9"),
        pkg("e", "1"),
    ];
    let d = diff_packages(&old, &new);
    assert_eq!(d.added, vec![pkg("e", "1")]);
    assert_eq!(d.removed, vec![pkg("d", "1")]);
    assert_eq!(
        d.upgraded
            .iter()
            .map(|c| (c.name.as_str(), c.from.as_str(), c.to.as_str()))
            .collect::<Vec<_>>(),
        vec![("b", "1.0", "1.1")]
    );
    assert_eq!(
        d.downgraded
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["c"]
    );
    assert!(diff_packages(&old, &old).is_empty());
}

#[test]
fn file_diff_counts_each_kind_of_change() {
    let f = |content: &str, mode: u32| FileFacts {
        kind: '0',
        mode,
        uid: 0,
        gid: 0,
        content: content.into(),
    };
    let old: BTreeMap<String, FileFacts> = [
        ("etc/a".to_string(), f("x", 0o644)),
        ("etc/b".to_string(), f("y", 0o644)),
        ("etc/c".to_string(), f("z", 0o644)),
        ("etc/gone".to_string(), f("z", 0o644)),
    ]
    .into();
    let new: BTreeMap<String, FileFacts> = [
        ("etc/a".to_string(), f("x", 0o644)),
        ("etc/b".to_string(), f("y2", 0o644)),
        ("etc/c".to_string(), f("z", 0o600)),
        ("etc/new".to_string(), f("n", 0o644)),
    ]
    .into();
    let c = diff_files(&old, &new);
    assert_eq!((c.added, c.removed, c.modified, c.total()), (1, 1, 2, 4));
}
