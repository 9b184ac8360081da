//! The local store's registry: one small JSON file per image version beside the artifacts
//! (`<store>/registry/<image>@<version>.json`), holding what AWS keeps in AMI tags —
//! image, version, artifact id, key, release status, environments it reached and the
//! image's tags. The state file stays the source of truth while it exists; the registry
//! is what `imgraph state recover` (and the automatic recovery of a plan that finds no
//! history) reads back when the state file was lost, so a lost state never reuses a
//! version number and never rebuilds an image the store already holds.
//!
//! Each file is written whole and atomically (temporary file, fsync, rename, fsync of the
//! folder), mode 0600 like the artifacts. Names are percent-encoded so any image name
//! and version make one safe file name.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, LocalError, Store};

/// The format of a registry file; a newer one is reported, never guessed at.
const FORMAT: u32 = 1;
const SUFFIX: &str = ".json";

/// One version of one image, as the local registry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub format: u32,
    pub image: String,
    pub version: String,
    pub artifact_id: String,
    pub key: String,
    /// `Candidate`, `Ready`, `Failed` or `Revoked`.
    pub status: String,
    pub built_at_ms: i64,
    /// Environments this version was delivered to, in delivery order.
    #[serde(default)]
    pub environments: Vec<String>,
    /// The image's tags as last applied to this version.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Why it was revoked, while its status is `Revoked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    /// When `imgraph gc` removed its artifact (the entry stays: its number is taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at_ms: Option<i64>,
}

impl VersionMeta {
    pub fn new(
        image: &str,
        version: &str,
        artifact_id: &str,
        key: &str,
        status: &str,
        built_at_ms: i64,
    ) -> Self {
        VersionMeta {
            format: FORMAT,
            image: image.to_string(),
            version: version.to_string(),
            artifact_id: artifact_id.to_string(),
            key: key.to_string(),
            status: status.to_string(),
            built_at_ms,
            environments: Vec::new(),
            tags: BTreeMap::new(),
            revoked_reason: None,
            removed_at_ms: None,
        }
    }
}

/// `name` with every byte outside `[A-Za-z0-9._-]` written as `%XX`.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Store {
    fn registry_dir(&self) -> PathBuf {
        self.root().join("registry")
    }

    fn meta_path(&self, image: &str, version: &str) -> PathBuf {
        self.registry_dir()
            .join(format!("{}@{}{SUFFIX}", encode(image), encode(version)))
    }

    /// The registry entry of one version, if there is one.
    pub fn version_meta(
        &self,
        image: &str,
        version: &str,
    ) -> Result<Option<VersionMeta>, LocalError> {
        read_meta(&self.meta_path(image, version))
    }

    /// Writes (or replaces) the entry of `meta.image` at `meta.version`, atomically.
    pub fn write_version_meta(&self, meta: &VersionMeta) -> Result<(), LocalError> {
        let dir = self.registry_dir();
        // Private like the store and its artifacts (0700; files 0600).
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create the registry folder", &dir))?;
        let target = self.meta_path(&meta.image, &meta.version);
        let mut tmp = tempfile::Builder::new()
            .prefix(".meta-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(io_err("create a temporary file in", &dir))?;
        let text = serde_json::to_vec_pretty(meta).map_err(|e| {
            LocalError::io(
                "encode registry entry",
                &target,
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })?;
        tmp.write_all(&text).map_err(io_err("write", tmp.path()))?;
        let file = tmp.as_file();
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err("set the mode of", tmp.path()))?;
        file.sync_all().map_err(io_err("sync", tmp.path()))?;
        tmp.persist(&target)
            .map_err(|e| LocalError::io("write registry entry", &target, e.error))?;
        self.sync_registry(&dir)
    }

    /// Changes the entry of one version with `change`; `fresh` makes the entry when it is
    /// missing (a version built before the registry existed, or whose file was removed).
    /// An entry that `change` leaves as it was is not written again (no fsync).
    pub fn update_version_meta(
        &self,
        image: &str,
        version: &str,
        fresh: impl FnOnce() -> VersionMeta,
        change: impl FnOnce(&mut VersionMeta),
    ) -> Result<(), LocalError> {
        let stored = self.version_meta(image, version)?;
        let mut meta = stored.clone().unwrap_or_else(fresh);
        change(&mut meta);
        if stored.as_ref() == Some(&meta) {
            return Ok(());
        }
        self.write_version_meta(&meta)
    }

    /// Every registry entry (of one image, when given), sorted by image and version.
    pub fn version_metas(&self, image: Option<&str>) -> Result<Vec<VersionMeta>, LocalError> {
        let dir = self.registry_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LocalError::io("list the registry folder", &dir, e)),
        };
        let prefix = image.map(|i| format!("{}@", encode(i)));
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list the registry folder", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(SUFFIX) {
                continue;
            }
            if prefix
                .as_ref()
                .is_some_and(|p| !name.starts_with(p.as_str()))
            {
                continue;
            }
            if let Some(meta) = read_meta(&entry.path())? {
                out.push(meta);
            }
        }
        out.sort_by(|a, b| {
            a.image
                .cmp(&b.image)
                .then_with(|| crate::state::compare_versions(&a.version, &b.version))
        });
        Ok(out)
    }
}

fn read_meta(path: &Path) -> Result<Option<VersionMeta>, LocalError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LocalError::io("read registry entry", path, e)),
    };
    let meta: VersionMeta = serde_json::from_slice(&bytes).map_err(|e| LocalError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("not a registry entry: {e}"),
    })?;
    if meta.format > FORMAT {
        return Err(LocalError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "written by a newer imgraph (format {}, this build knows {FORMAT})",
                meta.format
            ),
        });
    }
    Ok(Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_that_changes_nothing_leaves_the_file_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("store"));
        let meta = VersionMeta::new("web", "1.0.0", "local:ab", "k", "Candidate", 7);
        store.write_version_meta(&meta).unwrap();
        let path = store.meta_path("web", "1.0.0");
        let inode = fs::metadata(&path).unwrap().ino();
        let same = |m: &mut VersionMeta| m.status = "Candidate".into();
        store
            .update_version_meta("web", "1.0.0", || unreachable!(), same)
            .unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "rewritten");
        let ready = |m: &mut VersionMeta| m.status = "Ready".into();
        store
            .update_version_meta("web", "1.0.0", || unreachable!(), ready)
            .unwrap();
        assert_ne!(fs::metadata(&path).unwrap().ino(), inode, "not written");
        assert_eq!(
            store.version_meta("web", "1.0.0").unwrap().unwrap().status,
            "Ready"
        );
    }

    #[test]
    fn entries_round_trip_and_names_are_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("store"));
        let mut meta = VersionMeta::new("web/x y", "2.3.10", "local:ab", "k", "Candidate", 7);
        store.write_version_meta(&meta).unwrap();
        let other = VersionMeta::new("web/x y", "2.3.9", "local:cd", "k2", "Ready", 5);
        store.write_version_meta(&other).unwrap();
        store
            .write_version_meta(&VersionMeta::new(
                "base", "1.0.0", "local:ef", "k3", "Ready", 1,
            ))
            .unwrap();
        store
            .update_version_meta(
                "web/x y",
                "2.3.10",
                || unreachable!(),
                |m| {
                    m.status = "Ready".into();
                    m.environments.push("staging".into());
                },
            )
            .unwrap();
        meta.status = "Ready".into();
        meta.environments = vec!["staging".into()];
        let web = store.version_metas(Some("web/x y")).unwrap();
        assert_eq!(web, vec![other, meta]);
        assert_eq!(store.version_metas(None).unwrap().len(), 3);
        let names: Vec<String> = fs::read_dir(store.root().join("registry"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"web%2Fx%20y@2.3.10.json".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn a_damaged_entry_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        fs::create_dir_all(dir.path().join("registry")).unwrap();
        fs::write(dir.path().join("registry/base@1.0.0.json"), b"{").unwrap();
        let err = store.version_metas(None).unwrap_err().to_string();
        assert!(err.contains("base@1.0.0.json"), "{err}");
    }
}
