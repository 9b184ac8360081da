//! The shared artifact store of the local provider: objects named `<hex>.tar.zst` after
//! the blake3 of their bytes, exactly as in the local store folder, which is the cache.
//!
//! - **publish** writes an artifact once: a create (If-None-Match) for one that fits in
//!   [`SINGLE_PUT_MAX`] bytes, where "already exists" means another runner published the
//!   same bytes; a larger one goes up in parts after a look that it is not there yet (a
//!   multipart upload cannot be conditional through object_store; two runners racing on
//!   the same artifact upload identical bytes, so the loser's write changes nothing).
//!   The file is hashed on the way up and nothing is published if it does not match its
//!   name.
//! - **fetch** streams an object into a temporary file beside the destination while
//!   hashing it (memory stays at one chunk), and only moves it into place when the hash
//!   matches the name; a mismatch is [`RemoteError::Corrupt`] naming the object.
//! - **ensure_local** is the lazy path: the local file if it is there, else a fetch.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use object_store::{ObjectStoreExt, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ObjectClient, RemoteError, Written};

/// The largest artifact written with one conditional request (held in memory once).
pub const SINGLE_PUT_MAX: u64 = 32 * 1024 * 1024;
/// Part size of larger uploads (S3's minimum is 5 MiB).
const PART_SIZE: usize = 16 * 1024 * 1024;
const READ_CHUNK: usize = 1024 * 1024;
/// Same modes as the local store: artifacts are whole root file systems.
const STORE_MODE: u32 = 0o700;
const ARTIFACT_MODE: u32 = 0o600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// This call wrote it.
    Written,
    /// It was there already (published by an earlier run or another runner).
    AlreadyThere,
}

/// The shared store of one local provider.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    client: ObjectClient,
}

fn object_name(hex: &str) -> String {
    format!("{hex}.tar.zst")
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RemoteError + 'a {
    move |source| RemoteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl ArtifactStore {
    pub fn new(client: ObjectClient) -> Self {
        ArtifactStore { client }
    }

    pub fn client(&self) -> &ObjectClient {
        &self.client
    }

    /// Whether the shared store has the artifact (it is not read).
    pub async fn contains(&self, hex: &str) -> Result<bool, RemoteError> {
        let path = self.client.path(&object_name(hex));
        self.client.count_read();
        match self.client.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.client.err("look up", &path, e)),
        }
    }

    /// Publishes the artifact file `file`, whose bytes must hash to `hex`.
    pub async fn publish(&self, hex: &str, file: &Path) -> Result<Published, RemoteError> {
        let size = tokio::fs::metadata(file)
            .await
            .map_err(io_err("read the size of", file))?
            .len();
        // A look first: publishing what is there already (every run after the first
        // publish of a version) then costs one small request.
        if self.contains(hex).await? {
            return Ok(Published::AlreadyThere);
        }
        if size <= SINGLE_PUT_MAX {
            let bytes = tokio::fs::read(file).await.map_err(io_err("read", file))?;
            self.check_hash(hex, blake3::hash(&bytes).to_hex().as_str(), file)?;
            return match self
                .client
                .create_content_addressed(&object_name(hex), bytes.into())
                .await?
            {
                Written::Ours(_) => Ok(Published::Written),
                Written::Refused => Ok(Published::AlreadyThere),
            };
        }
        let path = self.client.path(&object_name(hex));
        self.client.count_write();
        let upload = self
            .client
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.client.err("start the upload of", &path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut reader = tokio::fs::File::open(file)
            .await
            .map_err(io_err("open", file))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io_err("read", file)(e));
                }
            };
            hasher.update(&buf[..n]);
            if let Err(e) = writer.wait_for_capacity(2).await {
                return Err(self.client.err("upload", &path, e));
            }
            writer.write(&buf[..n]);
        }
        if let Err(e) = self.check_hash(hex, hasher.finalize().to_hex().as_str(), file) {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(|e| self.client.err("finish the upload of", &path, e))?;
        Ok(Published::Written)
    }

    fn check_hash(&self, expected: &str, actual: &str, file: &Path) -> Result<(), RemoteError> {
        if expected == actual {
            return Ok(());
        }
        Err(RemoteError::Corrupt {
            object: file.display().to_string(),
            location: "the local store".to_owned(),
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        })
    }

    /// Downloads the artifact to `dest` (verified); false when the shared store does not
    /// have it. A partial or mismatching download never appears at `dest`.
    pub async fn fetch(&self, hex: &str, dest: &Path) -> Result<bool, RemoteError> {
        let path = self.client.path(&object_name(hex));
        self.client.count_read();
        let got = match self.client.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.client.err("download", &path, e)),
        };
        let folder = dest.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(STORE_MODE)
            .create(folder)
            .map_err(io_err("create the store", folder))?;
        // `.pack-*.tmp`: the local store's sweep of unfinished writes removes a killed
        // fetch's leftovers as it does a killed pack's.
        let tmp = tempfile::Builder::new()
            .prefix(".pack-")
            .suffix(".tmp")
            .tempfile_in(folder)
            .map_err(io_err("create a temporary file in", folder))?;
        let std_file = tmp
            .as_file()
            .try_clone()
            .map_err(io_err("open", tmp.path()))?;
        let mut out = tokio::fs::File::from_std(std_file);
        let mut hasher = blake3::Hasher::new();
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.client.err("download", &path, e))?;
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(io_err("write", tmp.path()))?;
        }
        out.flush().await.map_err(io_err("write", tmp.path()))?;
        out.sync_all().await.map_err(io_err("sync", tmp.path()))?;
        drop(out);
        let actual = hasher.finalize().to_hex();
        if actual.as_str() != hex {
            return Err(RemoteError::Corrupt {
                object: path.to_string(),
                location: self.client.location().to_string(),
                expected: hex.to_owned(),
                actual: actual.to_string(),
            });
        }
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(ARTIFACT_MODE))
            .map_err(io_err("set the mode of", tmp.path()))?;
        tmp.persist(dest)
            .map_err(|e| io_err("move the downloaded artifact to", dest)(e.error))?;
        std::fs::File::open(folder)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync the store folder", folder))?;
        Ok(true)
    }

    /// The artifact's file in `local_store`, downloaded first when only the shared store
    /// has it; `None` when neither has it.
    pub async fn ensure_local(
        &self,
        hex: &str,
        local_store: &Path,
    ) -> Result<Option<PathBuf>, RemoteError> {
        let dest = local_store.join(object_name(hex));
        if dest.is_file() {
            return Ok(Some(dest));
        }
        Ok(self.fetch(hex, &dest).await?.then_some(dest))
    }
}
