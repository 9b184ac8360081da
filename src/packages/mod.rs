//! What is inside an image: its package database, read after a build, and the comparison
//! of two versions' package lists.
//!
//! Everything here is pure: it parses bytes that a provider found in a packed image
//! (`var/lib/dpkg/status`, `lib/apk/db/installed`, `etc/os-release`) and compares lists.
//! Reading the bytes out of an artifact is the provider's job (see
//! `provider::local::inspect`), recording them the state's.
//!
//! What is read:
//! - **dpkg** (Debian, Ubuntu): every paragraph of `var/lib/dpkg/status` whose `Status`
//!   says `installed`; name, version, architecture and source package. Packages that are
//!   only unpacked, half-configured or removed with their configuration kept are not
//!   installed and are left out.
//! - **apk** (Alpine): every record of `lib/apk/db/installed` (`P:`, `V:`, `A:`, `o:`).
//! - **os-release**: `ID`, `VERSION_ID` and `PRETTY_NAME`, for package URLs in an SBOM.
//!
//! Not read: rpm databases (Fedora, RHEL, Amazon Linux keep them in `rpmdb.sqlite` or
//! Berkeley DB files of binary rpm headers, which need a header parser this crate does not
//! have); an rpm-based image is recorded with no package manager found.

mod apk;
mod dpkg;
mod version;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use version::compare_versions;

/// Paths (relative to the image root, as in a packed image) of the files [`Inventory`] is
/// read from, in the order they are looked for.
pub const DPKG_STATUS: &str = "var/lib/dpkg/status";
pub const APK_INSTALLED: &[&str] = &["lib/apk/db/installed", "usr/lib/apk/db/installed"];
pub const OS_RELEASE: &[&str] = &["etc/os-release", "usr/lib/os-release"];

/// A package manager whose database imgraph reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manager {
    Dpkg,
    Apk,
}

impl Manager {
    pub fn as_str(self) -> &'static str {
        match self {
            Manager::Dpkg => "dpkg",
            Manager::Apk => "apk",
        }
    }

    pub fn parse(s: &str) -> Option<Manager> {
        match s {
            "dpkg" => Some(Manager::Dpkg),
            "apk" => Some(Manager::Apk),
            _ => None,
        }
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub manager: Manager,
    pub name: String,
    pub version: String,
    /// `amd64`, `all`, `x86_64`, …; empty when the database does not say.
    pub arch: String,
    /// The source package, when it differs from the name (dpkg `Source:`, apk `o:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Package {
    /// What identifies a package across versions of an image: the same name can be
    /// installed for two architectures (Debian multiarch).
    pub fn identity(&self) -> (Manager, &str, &str) {
        (self.manager, &self.name, &self.arch)
    }
}

/// What `etc/os-release` says about the image's distribution.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    /// `debian`, `ubuntu`, `alpine`, …
    pub id: Option<String>,
    /// `12`, `3.20.1`, …
    pub version_id: Option<String>,
    pub pretty_name: Option<String>,
}

/// The packages of one image version, as read from its package databases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The databases found; empty when the image has none that imgraph reads.
    pub managers: Vec<Manager>,
    pub os: OsRelease,
    /// Sorted by manager, name and architecture.
    pub packages: Vec<Package>,
}

/// The files [`Inventory::read`] needs, as found in an image: `None` where the image has
/// no such file.
#[derive(Debug, Clone, Default)]
pub struct DatabaseFiles {
    pub dpkg_status: Option<Vec<u8>>,
    pub apk_installed: Option<Vec<u8>>,
    pub os_release: Option<Vec<u8>>,
}

/// A package database that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("read the {manager} database at `{path}`: {detail}")]
pub struct ParseError {
    pub manager: &'static str,
    pub path: &'static str,
    pub detail: String,
}

impl Inventory {
    /// Parses the databases found in an image.
    pub fn read(files: &DatabaseFiles) -> Result<Inventory, ParseError> {
        let mut inv = Inventory::default();
        if let Some(bytes) = &files.dpkg_status {
            inv.managers.push(Manager::Dpkg);
            inv.packages.extend(dpkg::parse_status(bytes)?);
        }
        if let Some(bytes) = &files.apk_installed {
            inv.managers.push(Manager::Apk);
            inv.packages.extend(apk::parse_installed(bytes)?);
        }
        if let Some(bytes) = &files.os_release {
            inv.os = parse_os_release(&String::from_utf8_lossy(bytes));
        }
        inv.sort();
        Ok(inv)
    }

    /// Puts packages in their canonical order (manager, name, architecture).
    pub fn sort(&mut self) {
        self.packages
            .sort_by(|a, b| a.identity().cmp(&b.identity()));
        self.packages.dedup_by(|a, b| a.identity() == b.identity());
    }
}

/// `KEY=value` lines; values may be quoted with `"` or `'` (os-release(5)).
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value)
            .replace("\\\"", "\"");
        let slot = match key.trim() {
            "ID" => &mut os.id,
            "VERSION_ID" => &mut os.version_id,
            "PRETTY_NAME" => &mut os.pretty_name,
            _ => continue,
        };
        *slot = Some(value);
    }
    os
}

/// A package whose version differs between two image versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionChange {
    pub manager: Manager,
    pub name: String,
    pub arch: String,
    pub from: String,
    pub to: String,
}

/// What changed in the packages between two image versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PackageDiff {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    /// Newer by the package manager's version order.
    pub upgraded: Vec<VersionChange>,
    /// Older by that order.
    pub downgraded: Vec<VersionChange>,
}

impl PackageDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.upgraded.is_empty()
            && self.downgraded.is_empty()
    }
}

/// Compares two package lists, each package matched by manager, name and architecture.
pub fn diff_packages(old: &[Package], new: &[Package]) -> PackageDiff {
    let index = |list: &'_ [Package]| -> BTreeMap<(Manager, String, String), Package> {
        list.iter()
            .map(|p| ((p.manager, p.name.clone(), p.arch.clone()), p.clone()))
            .collect()
    };
    let (old, new) = (index(old), index(new));
    let mut diff = PackageDiff::default();
    for (id, before) in &old {
        match new.get(id) {
            None => diff.removed.push(before.clone()),
            Some(after) if after.version != before.version => {
                let change = VersionChange {
                    manager: after.manager,
                    name: after.name.clone(),
                    arch: after.arch.clone(),
                    from: before.version.clone(),
                    to: after.version.clone(),
                };
                match compare_versions(&before.version, &after.version) {
                    Ordering::Greater => diff.downgraded.push(change),
                    _ => diff.upgraded.push(change),
                }
            }
            Some(_) => {}
        }
    }
    diff.added = new
        .iter()
        .filter(|(id, _)| !old.contains_key(*id))
        .map(|(_, p)| p.clone())
        .collect();
    diff
}

/// What one path of an image is, for comparing two images file by file: its kind, mode,
/// owner and content (digest of a file's bytes, or a symlink's target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub content: String,
}

/// How many paths differ between two images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FileChanges {
    pub added: usize,
    pub removed: usize,
    pub modified: usize,
}

impl FileChanges {
    pub fn total(&self) -> usize {
        self.added + self.removed + self.modified
    }
}

/// Counts the paths added, removed and modified (kind, mode, owner or content).
pub fn diff_files(
    old: &BTreeMap<String, FileFacts>,
    new: &BTreeMap<String, FileFacts>,
) -> FileChanges {
    let mut changes = FileChanges::default();
    for (path, before) in old {
        match new.get(path) {
            None => changes.removed += 1,
            Some(after) if after != before => changes.modified += 1,
            Some(_) => {}
        }
    }
    changes.added = new.keys().filter(|p| !old.contains_key(*p)).count();
    changes
}

#[cfg(test)]
mod tests;
