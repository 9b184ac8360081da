//! The content-addressed store: one folder of `<hex>.tar.zst` files, each named after the
//! blake3 of its own bytes, so an artifact id (`local:<hex>`) both names and verifies it.
//!
//! The store folder is 0700 and every artifact 0600 ([`STORE_MODE`], [`ARTIFACT_MODE`]).
//!
//! Writes are atomic: a pack goes to a temporary file in the store folder (`.pack-*.tmp`),
//! is fsynced, and is renamed into place; the folder is then fsynced so the rename
//! survives a crash. A reader therefore sees a complete artifact or none. A crash mid-pack
//! can leave a `.pack-*.tmp` file behind; it never has an artifact's name, so it is never
//! mistaken for one.
//!
//! Unpacking verifies the bytes against the id before writing anything, so a damaged
//! artifact is reported as [`LocalError::Corrupt`] instead of producing a subtly wrong
//! instance (an image is only `Ready` if tested from that exact image). The damaged file
//! is moved to `corrupt/` at the same time: the plan then sees the artifact missing and
//! rebuilds the image, rather than every apply failing on it.

use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::group_sync::GroupSync;

use super::pack::pack_deterministic;
use super::unpack::{read_ahead, unpack_tar};
use super::{io_err, unless_cancelled, Cancellable, LocalError};

/// The prefix of every artifact id this store hands out.
pub const ID_PREFIX: &str = "local:";

/// The `<hex>` of an id `local:<64 lowercase hex>`; `None` for any other id.
pub fn hex_of(artifact_id: &str) -> Option<&str> {
    let hex = artifact_id.strip_prefix(ID_PREFIX)?;
    let valid = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then_some(hex)
}

/// The store folder's mode: artifacts are whole root file systems (an image's
/// `/etc/shadow`, host keys), so only the user running imgraph may list or read them.
pub const STORE_MODE: u32 = 0o700;

/// The store's subfolder for artifacts whose bytes no longer match their id.
pub const CORRUPT_DIR: &str = "corrupt";

/// Every artifact's mode (see [`STORE_MODE`]).
pub const ARTIFACT_MODE: u32 = 0o600;

/// Content-addressed store folder: `<store>/<hex>.tar.zst`; an artifact id is
/// "local:<64 hex>" = blake3 of the tar.zst BYTES.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Syncs of the store folder and of the registry folder, shared by every clone:
    /// builds that finish together share one sync of each (see [`GroupSync`]).
    folder_syncs: Arc<FolderSyncs>,
}

#[derive(Debug, Default)]
struct FolderSyncs {
    store: GroupSync,
    registry: GroupSync,
}

impl Store {
    /// A store in `root`; the folder is created by the first pack.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store {
            root: root.into(),
            folder_syncs: Arc::default(),
        }
    }

    /// Makes the renames made in the store folder so far durable.
    fn sync_root(&self) -> Result<(), LocalError> {
        self.folder_syncs.store.sync(|| sync_dir(&self.root))
    }

    /// Makes the renames made in `dir`, the registry folder, so far durable.
    pub(super) fn sync_registry(&self, dir: &Path) -> Result<(), LocalError> {
        self.folder_syncs.registry.sync(|| {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("sync the registry folder", dir))
        })
    }

    /// The store folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the artifact lives; `None` for ids that are not `local:<64 lowercase hex>`.
    pub fn path_of(&self, artifact_id: &str) -> Option<PathBuf> {
        hex_of(artifact_id).map(|hex| self.root.join(format!("{hex}.tar.zst")))
    }

    /// Whether the artifact is in the store (it is not read or verified).
    pub fn contains(&self, artifact_id: &str) -> bool {
        self.path_of(artifact_id).is_some_and(|p| p.is_file())
    }

    /// Packs `tree` deterministically and stores it atomically (write to a temp file in
    /// the store, fsync, rename). Returns (artifact_id, size_bytes). Same tree -> same
    /// bytes -> same id; an existing identical artifact is kept (one whose bytes no longer
    /// match its name is replaced). Stops with [`LocalError::Cancelled`] once `cancel` is
    /// cancelled, leaving no temporary file behind.
    pub fn pack_tree(
        &self,
        tree: &Path,
        cancel: &CancellationToken,
    ) -> Result<(String, u64), LocalError> {
        self.create()?;
        // Dropping `tmp` on any early return deletes it.
        let tmp = tempfile::Builder::new()
            .prefix(".pack-")
            .suffix(".tmp")
            .tempfile_in(&self.root)
            .map_err(io_err("create a temporary file in", &self.root))?;
        let mut writer = HashingWriter {
            inner: io::BufWriter::with_capacity(256 * 1024, tmp.as_file()),
            hasher: blake3::Hasher::new(),
            len: 0,
        };
        pack_deterministic(tree, &mut writer, cancel)?;
        writer.inner.flush().map_err(io_err("write", tmp.path()))?;
        let hex = writer.hasher.finalize().to_hex();
        let size = writer.len;
        // The buffered writer borrows the temp file, which is about to be moved.
        drop(writer);
        let id = format!("{ID_PREFIX}{hex}");
        let target = self.root.join(format!("{hex}.tar.zst"));

        let existing = hash_file(&target, cancel);
        if matches!(existing, Ok(Some(existing)) if existing.as_str() == hex.as_str()) {
            tmp.close()
                .map_err(io_err("remove a temporary file in", &self.root))?;
            return Ok((id, size));
        }

        crate::crash::point("pack: written, not yet in the store");
        let file = tmp.as_file();
        // An image holds its own `/etc/shadow` and keys: only imgraph's user reads it.
        file.set_permissions(fs::Permissions::from_mode(ARTIFACT_MODE))
            .map_err(io_err("set the mode of", tmp.path()))?;
        file.sync_all().map_err(io_err("sync", tmp.path()))?;
        tmp.persist(&target)
            .map_err(|e| LocalError::io("move the packed image to", &target, e.error))?;
        self.sync_root()?;
        Ok((id, size))
    }

    /// Creates the store folder (and its parents) if needed, and gives it mode 0700.
    fn create(&self) -> Result<(), LocalError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(STORE_MODE)
            .create(&self.root)
            .map_err(io_err("create the store", &self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(STORE_MODE))
            .map_err(io_err("set the mode of the store", &self.root))
    }

    /// Unpacks an artifact into `dest` (must be empty or not exist). The artifact's bytes
    /// are checked against its id first; a mismatch is [`LocalError::Corrupt`] and
    /// nothing is written. Stops with [`LocalError::Cancelled`] once `cancel` is cancelled.
    pub fn unpack(
        &self,
        artifact_id: &str,
        dest: &Path,
        cancel: &CancellationToken,
    ) -> Result<(), LocalError> {
        let (path, tar) = self.open_tar(artifact_id, cancel)?;
        let tar = read_ahead(tar).map_err(io_err("start a read-ahead thread for", &path))?;
        unpack_tar(tar, dest, &path, cancel)
    }

    /// The uncompressed tar stream of an artifact, after checking its bytes against its
    /// id (a mismatch is [`LocalError::Corrupt`]). Returns the artifact's path too, for
    /// errors.
    pub fn open_tar(
        &self,
        artifact_id: &str,
        cancel: &CancellationToken,
    ) -> Result<(PathBuf, impl io::Read), LocalError> {
        let path = self.artifact_path(artifact_id)?;
        let expected = &artifact_id[ID_PREFIX.len()..];
        match unless_cancelled(cancel, hash_file(&path, cancel))? {
            Some(actual) if actual.as_str() == expected => {}
            Some(actual) => {
                let moved = self.set_aside(&path)?;
                return Err(LocalError::Corrupt {
                    path,
                    detail: format!(
                        "its content hash is {actual}, not the {expected} its id names; \
                         it was moved to `{}`, so the next `imgraph apply` rebuilds the \
                         image that made it",
                        moved.display()
                    ),
                });
            }
            None => {
                return Err(LocalError::io(
                    "open artifact",
                    &path,
                    io::Error::from(io::ErrorKind::NotFound),
                ))
            }
        }
        let file = File::open(&path).map_err(io_err("open artifact", &path))?;
        let reader = BufReader::with_capacity(256 * 1024, file);
        let decoder = zstd::stream::read::Decoder::with_buffer(reader)
            .map_err(io_err("start zstd decoding of", &path))?;
        Ok((path, decoder))
    }

    /// Moves a corrupt artifact out of the store into `<store>/corrupt/`, so the store no
    /// longer holds anything under its id: the next plan sees it missing and rebuilds the
    /// image that made it, instead of every apply failing on the same bytes. The bytes are
    /// kept for inspection, not deleted. Returns where they went.
    fn set_aside(&self, path: &Path) -> Result<PathBuf, LocalError> {
        let folder = self.root.join(CORRUPT_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(STORE_MODE)
            .create(&folder)
            .map_err(io_err("create the folder for corrupt artifacts", &folder))?;
        let name = path.file_name().unwrap_or_default();
        let target = folder.join(name);
        fs::rename(path, &target).map_err(io_err("move a corrupt artifact out of", path))?;
        self.sync_root()?;
        Ok(target)
    }

    /// The entries of the store folder (none when it does not exist yet).
    fn entries(&self) -> Result<Vec<fs::DirEntry>, LocalError> {
        match fs::read_dir(&self.root) {
            Ok(entries) => entries
                .map(|e| e.map_err(io_err("list store", &self.root)))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(LocalError::io("list store", &self.root, e)),
        }
    }

    /// Removes the temporary files of packs that never finished (a killed run). Only safe
    /// while no pack runs: callers hold the state lease. Returns the files removed.
    pub fn remove_unfinished_packs(&self) -> Result<Vec<PathBuf>, LocalError> {
        let mut removed = Vec::new();
        for entry in self.entries()? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".pack-") && name.ends_with(".tmp") {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err("remove unfinished pack", &path))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Removes every artifact whose id is not in `keep`, with its size in bytes. Only the
    /// store's own artifact files (`<64 hex>.tar.zst`) are looked at: the registry,
    /// `corrupt/` and anything else in the folder stay. Callers hold the state lease, so
    /// no pack is running.
    pub fn remove_unreferenced(
        &self,
        keep: &std::collections::HashSet<String>,
    ) -> Result<Vec<(PathBuf, u64)>, LocalError> {
        let mut removed = Vec::new();
        for entry in self.entries()? {
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".tar.zst")) else {
                continue;
            };
            let id = format!("{ID_PREFIX}{hex}");
            if keep.contains(&id) || self.path_of(&id).is_none() {
                continue;
            }
            let path = entry.path();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(io_err("remove unreferenced artifact", &path))?;
            removed.push((path, size));
        }
        if !removed.is_empty() {
            self.sync_root()?;
        }
        Ok(removed)
    }

    /// Removes an artifact; removing one that is already gone is not an error.
    pub fn remove(&self, artifact_id: &str) -> Result<(), LocalError> {
        let path = self.artifact_path(artifact_id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LocalError::io("remove artifact", &path, e)),
        }
    }

    fn artifact_path(&self, artifact_id: &str) -> Result<PathBuf, LocalError> {
        self.path_of(artifact_id)
            .ok_or_else(|| LocalError::InvalidArtifactId {
                id: artifact_id.to_string(),
            })
    }
}

/// The blake3 hex of a file's bytes, or `None` if it does not exist.
fn hash_file(path: &Path, cancel: &CancellationToken) -> Result<Option<String>, LocalError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LocalError::io("open artifact", path, e)),
    };
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(Cancellable {
            inner: file,
            cancel,
        })
        .map_err(io_err("read artifact", path))?;
    Ok(Some(hasher.finalize().to_hex().to_string()))
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), LocalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the store folder", dir))
}

/// Hashes and counts the bytes on their way to the temporary file, so the id needs no
/// second read.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
