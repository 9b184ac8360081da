//! Shared artifacts of the local provider (`provider "local" { store { s3 … } }`): every
//! artifact a build packs is published to a shared store after the build, and an artifact
//! this runner's store lacks (another runner built it) is fetched from there when a test,
//! a probe, a downstream build or a delivery needs it. The store folder stays the cache:
//! nothing is fetched that is already in it, and nothing is read from the shared store
//! without being verified against its name (the blake3 of its bytes) first.
//!
//! The shared store is behind [`SharedArtifacts`], so this module knows nothing of S3: the
//! provider factory (`provider::connect`) implements it on `remote::artifacts` when
//! imgraph is built with the `s3` feature. Besides a project's own shared store, a local
//! provider may read from other projects' stores (the artifacts of `imgraph` sources):
//! those are only read, never written.
//!
//! What is not done here: a shared object is never deleted (`imgraph gc` removes cache
//! copies only; a bucket lifecycle rule ages shared objects out), and a large upload
//! interrupted by a kill leaves its parts to the bucket's rule for incomplete multipart
//! uploads rather than to the ledger.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::store::{hex_of, Store};
use super::{LocalError, LocalProvider};
use crate::provider::{append_log, ProviderError};

/// Why a shared artifact store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// A downloaded object's bytes do not hash to its name; nothing was kept.
    #[error("its bytes hash to {actual}, not to the {expected} its name promises")]
    Corrupt {
        /// The object, as a URL (`s3://bucket/key`).
        object: String,
        expected: String,
        actual: String,
    },
    /// The store failed (network, permissions, a store that ignores conditional writes).
    #[error(transparent)]
    Store(Box<dyn std::error::Error + Send + Sync>),
}

/// An object of a shared store whose bytes do not hash to its name.
#[derive(Debug)]
pub struct CorruptObject {
    /// As a URL (`s3://bucket/key`).
    pub object: String,
    /// The store, as [`SharedArtifacts::name`] says.
    pub store: String,
    pub expected: String,
    pub actual: String,
}

/// A shared store of artifacts named after the blake3 (hex) of their bytes, as a reader
/// sees it.
///
/// Contract: `fetch` never leaves anything at `dest` but the verified bytes (a mismatch is
/// [`SharedError::Corrupt`]).
#[async_trait]
pub trait SharedArtifacts: Send + Sync {
    /// Names the store in messages and logs (`s3://bucket/prefix/`).
    fn name(&self) -> String;
    /// Whether the store has the artifact (it is not read).
    async fn contains(&self, hex: &str) -> Result<bool, SharedError>;
    /// Downloads the artifact to `dest`, verified; false when the store does not have it.
    async fn fetch(&self, hex: &str, dest: &Path) -> Result<bool, SharedError>;
}

/// A project's own shared store, which it also writes.
///
/// Contract: `publish` writes an object at most once (a create that fails when the object
/// exists, which then means the same bytes are there) and never publishes a file whose
/// bytes do not hash to `hex`.
#[async_trait]
pub trait OwnArtifacts: SharedArtifacts {
    /// This store as a reader sees it.
    fn as_shared(&self) -> &dyn SharedArtifacts;
    /// Proves the store can be written safely (it honours conditional writes), once
    /// before an apply records anything.
    async fn check(&self) -> Result<(), SharedError>;
    /// Publishes `file`, whose bytes hash to `hex`; true when this call wrote it, false
    /// when it was there already.
    async fn publish(&self, hex: &str, file: &Path) -> Result<bool, SharedError>;
}

/// The shared stores a local provider uses.
#[derive(Clone, Default)]
pub struct SharedStores {
    /// The project's own (`store { s3 … }`): published to and fetched from.
    pub own: Option<Arc<dyn OwnArtifacts>>,
    /// Other projects' stores (of `imgraph` sources): only fetched from.
    pub upstream: Vec<Arc<dyn SharedArtifacts>>,
}

impl SharedStores {
    /// Every store to fetch from, the project's own first.
    fn all(&self) -> impl Iterator<Item = &dyn SharedArtifacts> {
        let own = self.own.iter().map(|o| o.as_shared());
        own.chain(self.upstream.iter().map(|u| u.as_ref()))
    }

    fn is_empty(&self) -> bool {
        self.own.is_none() && self.upstream.is_empty()
    }
}

/// Wraps a shared store's error with what was being done (`op` on `subject`).
fn shared_err(
    op: &'static str,
    subject: &str,
    store: &dyn SharedArtifacts,
) -> impl FnOnce(SharedError) -> LocalError {
    let (subject, store) = (subject.to_owned(), store.name());
    move |source| match source {
        SharedError::Corrupt {
            object,
            expected,
            actual,
        } => LocalError::SharedCorrupt(Box::new(CorruptObject {
            object,
            store,
            expected,
            actual,
        })),
        source => LocalError::Shared {
            op,
            subject,
            store,
            source: Box::new(source),
        },
    }
}

/// The `<hex>` of a well-formed local artifact id and its file in this runner's store.
fn located<'a>(store: &Store, artifact_id: &'a str) -> Result<(&'a str, PathBuf), LocalError> {
    match (hex_of(artifact_id), store.path_of(artifact_id)) {
        (Some(hex), Some(path)) => Ok((hex, path)),
        _ => Err(LocalError::InvalidArtifactId {
            id: artifact_id.to_owned(),
        }),
    }
}

impl LocalProvider {
    /// Checks the project's own shared store before an apply (conditional writes).
    pub(super) async fn check_shared(&self) -> Result<(), ProviderError> {
        if let Some(own) = &self.shared.own {
            own.check().await.map_err(shared_err(
                "check",
                "that it honours conditional writes",
                own.as_ref(),
            ))?;
        }
        Ok(())
    }

    /// Whether the artifact is in this runner's store or in a shared store it reads.
    pub(super) async fn artifact_anywhere(&self, artifact_id: &str) -> Result<bool, ProviderError> {
        if self.store.contains(artifact_id) {
            return Ok(true);
        }
        // Not a local artifact id: nothing to find (as for the store alone).
        let Some(hex) = hex_of(artifact_id) else {
            return Ok(false);
        };
        for shared in self.shared.all() {
            let found = shared.contains(hex).await.map_err(shared_err(
                "look up",
                &format!("artifact {artifact_id}"),
                shared,
            ))?;
            if found {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Makes sure the artifact is in this runner's store, fetching it from the first
    /// shared store that has it (noted in `log`). An artifact no store has is left for
    /// the caller's read to report.
    pub(super) async fn ensure_local(
        &self,
        artifact_id: &str,
        log: &Path,
    ) -> Result<(), ProviderError> {
        if self.store.contains(artifact_id) || self.shared.is_empty() {
            return Ok(());
        }
        let (hex, dest) = located(&self.store, artifact_id)?;
        for shared in self.shared.all() {
            let started = Instant::now();
            append_log(
                log,
                &format!("imgraph: fetching {artifact_id} from {}", shared.name()),
            );
            let fetched = shared.fetch(hex, &dest).await.map_err(shared_err(
                "fetch",
                &format!("artifact {artifact_id}"),
                shared,
            ))?;
            if fetched {
                let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
                append_log(
                    log,
                    &format!(
                        "imgraph: fetched {artifact_id} ({size} bytes) from {} in {:.2}s, verified",
                        shared.name(),
                        started.elapsed().as_secs_f64()
                    ),
                );
                return Ok(());
            }
        }
        append_log(log, &format!("imgraph: no shared store has {artifact_id}"));
        Ok(())
    }

    /// Publishes a packed artifact to the project's own shared store (noted in `log`).
    pub(super) async fn publish_shared(
        &self,
        artifact_id: &str,
        log: &Path,
    ) -> Result<(), ProviderError> {
        let Some(own) = &self.shared.own else {
            return Ok(());
        };
        let (hex, file) = located(&self.store, artifact_id)?;
        let started = Instant::now();
        let written = own.publish(hex, &file).await.map_err(shared_err(
            "publish",
            &format!("artifact {artifact_id}"),
            own.as_ref(),
        ))?;
        let line = if written {
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            format!(
                "imgraph: published {artifact_id} ({size} bytes) to {} in {:.2}s",
                own.name(),
                started.elapsed().as_secs_f64()
            )
        } else {
            format!("imgraph: {artifact_id} is in {} already", own.name())
        };
        append_log(log, &line);
        Ok(())
    }
}
