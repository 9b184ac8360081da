//! Looking inside a stored image without unpacking it: the package databases an SBOM
//! needs, and a per-path index for comparing two images.
//!
//! Both read the artifact as one stream (its bytes checked against its id first, as for
//! an unpack), so nothing is written to disk and no path inside the image is ever
//! resolved on the host: an image whose `var/lib/dpkg/status` is a symlink to a host file
//! cannot make imgraph read that file. Of the database files only regular files are read;
//! `etc/os-release` may be a symlink (Debian's points to `../usr/lib/os-release`), in
//! which case `usr/lib/os-release` is used, as os-release(5) says.

use std::collections::BTreeMap;
use std::io::Read;

use tar::EntryType;
use tokio_util::sync::CancellationToken;

use super::{io_err, LocalError, Store};
use crate::packages::{
    DatabaseFiles, FileFacts, Inventory, APK_INSTALLED, DPKG_STATUS, OS_RELEASE,
};

/// A database file larger than this is refused rather than read into memory (a real
/// dpkg status file of a large server is a few megabytes).
const MAX_DATABASE_BYTES: u64 = 256 << 20;

/// The entry name as packed, without a leading `./` or a trailing `/`.
fn entry_name(raw: &[u8]) -> String {
    let name = String::from_utf8_lossy(raw);
    let name = name.strip_prefix("./").unwrap_or(&name);
    name.trim_end_matches('/').to_string()
}

/// Reads the package databases (dpkg, apk) and os-release of a stored image.
pub fn read_inventory(
    store: &Store,
    artifact_id: &str,
    cancel: &CancellationToken,
) -> Result<Inventory, LocalError> {
    let (path, tar) = store.open_tar(artifact_id, cancel)?;
    let read_err = |e| LocalError::io("read artifact", &path, e);
    let mut archive = tar::Archive::new(tar);
    let mut found: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let wanted = |name: &str| {
        name == DPKG_STATUS || APK_INSTALLED.contains(&name) || OS_RELEASE.contains(&name)
    };
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let name = entry_name(&entry.path_bytes());
        if !wanted(&name) || entry.header().entry_type() != EntryType::Regular {
            continue;
        }
        let size = entry.size();
        if size > MAX_DATABASE_BYTES {
            return Err(LocalError::Corrupt {
                path: path.clone(),
                detail: format!("`{name}` is {size} bytes, more than a package database can be"),
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        entry
            .read_to_end(&mut bytes)
            .map_err(io_err("read artifact", &path))?;
        found.insert(name, bytes);
    }
    let first = |names: &[&str]| names.iter().find_map(|n| found.get(*n).cloned());
    let files = DatabaseFiles {
        dpkg_status: found.get(DPKG_STATUS).cloned(),
        apk_installed: first(APK_INSTALLED),
        os_release: first(OS_RELEASE),
    };
    Inventory::read(&files).map_err(|source| LocalError::PackageDatabase { path, source })
}

/// Every path of a stored image with its kind, mode, owner and content digest (a
/// symlink's target), for `imgraph diff`.
pub fn file_index(
    store: &Store,
    artifact_id: &str,
    cancel: &CancellationToken,
) -> Result<BTreeMap<String, FileFacts>, LocalError> {
    let (path, tar) = store.open_tar(artifact_id, cancel)?;
    let read_err = |e| LocalError::io("read artifact", &path, e);
    let mut archive = tar::Archive::new(tar);
    let mut index = BTreeMap::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let name = entry_name(&entry.path_bytes());
        let header = entry.header();
        let kind = header.entry_type();
        let (mode, uid, gid) = (
            header.mode().map_err(read_err)?,
            header.uid().map_err(read_err)?,
            header.gid().map_err(read_err)?,
        );
        let content = match kind {
            EntryType::Symlink | EntryType::Link => entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default(),
            EntryType::Regular => {
                let mut hasher = blake3::Hasher::new();
                std::io::copy(&mut entry, &mut hasher).map_err(read_err)?;
                hasher.finalize().to_hex().to_string()
            }
            _ => String::new(),
        };
        index.insert(
            name,
            FileFacts {
                kind: char::from(kind.as_byte()),
                mode,
                uid,
                gid,
                content,
            },
        );
    }
    Ok(index)
}
