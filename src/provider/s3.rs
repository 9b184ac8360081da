//! The provider side of sharing on S3 (feature `s3`): [`SharedArtifacts`] and
//! [`OwnArtifacts`] on the content-addressed store of `remote::artifacts`, the project's
//! store announced in its shared state's place, and [`Upstream`] on another project's
//! journal with its announced store.
//!
//! **How a consumer finds a producer's artifacts.** A project with both a shared state
//! (`state { s3 … }`) and a shared store (`provider "local" { store { s3 … } }`) writes,
//! at the start of every apply, the object `artifact-store.json` in its state's place:
//! `{"format_version": 1, "bucket": "…", "prefix": "…"}`. A consumer reads it to learn
//! where the producer's artifacts are, and reaches that bucket with the region, endpoint
//! and credentials of its own `imgraph { s3 … }` block (one S3 service). A producer that
//! moves its store announces the new place at its next apply; artifacts it published
//! before stay where they were.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::local::{OwnArtifacts, SharedArtifacts, SharedError};
use super::upstream::{ReadyVersion, Upstream};
use super::ProviderError;
use crate::config::model::S3Location;
use crate::remote::artifacts::{ArtifactStore, Published};
use crate::remote::journal::ObjectJournal;
use crate::remote::{ObjectClient, RemoteError, Written};
use crate::state::{Record, ReleaseStatus, State};

/// The object, in a shared state's place, that names the project's artifact store.
pub const ANNOUNCEMENT: &str = "artifact-store.json";
const ANNOUNCEMENT_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Announcement {
    format_version: u32,
    bucket: String,
    prefix: String,
}

fn store_err(e: RemoteError) -> SharedError {
    SharedError::Store(Box::new(e))
}

/// A project's own shared store: published to, fetched from, announced in its shared
/// state's place when it has one.
pub struct OwnStore {
    pub store: ArtifactStore,
    /// The project's shared state, where the store is announced.
    pub announce_in: Option<ObjectClient>,
}

impl OwnStore {
    pub fn connect(place: &S3Location, state: Option<&S3Location>) -> Result<Self, RemoteError> {
        Ok(OwnStore {
            store: ArtifactStore::new(ObjectClient::new(place)?),
            announce_in: state.map(ObjectClient::new).transpose()?,
        })
    }

    /// Writes the announcement unless it already says this (create, or update on the
    /// version read; a refusal means another runner of the project just wrote it).
    async fn announce(&self, state: &ObjectClient) -> Result<(), RemoteError> {
        let place = self.store.client().location();
        let wanted = Announcement {
            format_version: ANNOUNCEMENT_FORMAT,
            bucket: place.bucket.clone(),
            prefix: place.prefix.clone(),
        };
        let found = state.read(ANNOUNCEMENT).await?;
        if let Some(found) = &found {
            if serde_json::from_slice::<Announcement>(&found.bytes).ok() == Some(wanted.clone()) {
                return Ok(());
            }
        }
        let body =
            Bytes::from(
                serde_json::to_vec(&wanted).map_err(|source| RemoteError::Decode {
                    object: state.path(ANNOUNCEMENT).to_string(),
                    location: state.location().to_string(),
                    source,
                })?,
            );
        let _: Written = match found {
            Some(found) => state.update(ANNOUNCEMENT, body, &found.version).await?,
            None => state.create(ANNOUNCEMENT, body).await?,
        };
        Ok(())
    }
}

/// What the store's own fetch says, with a corrupt object named by its URL.
async fn fetch_verified(
    store: &ArtifactStore,
    hex: &str,
    dest: &Path,
) -> Result<bool, SharedError> {
    store.fetch(hex, dest).await.map_err(|e| match e {
        RemoteError::Corrupt {
            object,
            expected,
            actual,
            ..
        } => SharedError::Corrupt {
            object: format!("s3://{}/{object}", store.client().location().bucket),
            expected,
            actual,
        },
        other => store_err(other),
    })
}

#[async_trait]
impl SharedArtifacts for OwnStore {
    fn name(&self) -> String {
        self.store.client().location().to_string()
    }

    async fn contains(&self, hex: &str) -> Result<bool, SharedError> {
        self.store.contains(hex).await.map_err(store_err)
    }

    async fn fetch(&self, hex: &str, dest: &Path) -> Result<bool, SharedError> {
        fetch_verified(&self.store, hex, dest).await
    }
}

#[async_trait]
impl OwnArtifacts for OwnStore {
    fn as_shared(&self) -> &dyn SharedArtifacts {
        self
    }

    async fn check(&self) -> Result<(), SharedError> {
        self.store
            .client()
            .check_conditional_writes()
            .await
            .map_err(store_err)?;
        if let Some(state) = &self.announce_in {
            self.announce(state).await.map_err(store_err)?;
        }
        Ok(())
    }

    async fn publish(&self, hex: &str, file: &Path) -> Result<bool, SharedError> {
        let published = self.store.publish(hex, file).await.map_err(store_err)?;
        Ok(published == Published::Written)
    }
}

/// Another project's shared state and, found through its announcement on first use, its
/// artifact store (read only).
pub struct Producer {
    state: ObjectClient,
    store: tokio::sync::OnceCell<ArtifactStore>,
}

/// Why another project's shared state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("find where the project at {place} shares its artifacts: it has no `{ANNOUNCEMENT}` (a project announces its `provider \"local\" {{ store {{ s3 … }} }}` there when it applies with both a shared state and a shared store)")]
    NoAnnouncement { place: String },
    #[error("replay the history of the project at {place}")]
    Replay {
        place: String,
        #[source]
        source: crate::state::StateError,
    },
    #[error("replay the history of the project at {place}: {detail}")]
    Local { place: String, detail: String },
}

impl Producer {
    pub fn connect(state: &S3Location) -> Result<Self, RemoteError> {
        Ok(Producer {
            state: ObjectClient::new(state)?,
            store: tokio::sync::OnceCell::new(),
        })
    }

    fn place(&self) -> String {
        self.state.location().to_string()
    }

    /// The producer's artifact store, named by its announcement and reached like its state.
    async fn store(&self) -> Result<&ArtifactStore, ProducerError> {
        self.store
            .get_or_try_init(|| async {
                let found = self.state.read(ANNOUNCEMENT).await?.ok_or_else(|| {
                    ProducerError::NoAnnouncement {
                        place: self.place(),
                    }
                })?;
                let said: Announcement =
                    serde_json::from_slice(&found.bytes).map_err(|source| RemoteError::Decode {
                        object: self.state.path(ANNOUNCEMENT).to_string(),
                        location: self.place(),
                        source,
                    })?;
                let place = S3Location {
                    bucket: said.bucket,
                    prefix: said.prefix,
                    ..self.state.location().clone()
                };
                Ok(ArtifactStore::new(ObjectClient::new(&place)?))
            })
            .await
    }

    /// The producer's history, replayed into an empty state in memory.
    async fn history(&self) -> Result<State, ProducerError> {
        let entries = ObjectJournal::new(self.state.clone())
            .read_since::<Record>(0)
            .await?;
        let place = self.place();
        let replay = |source| ProducerError::Replay {
            place: place.clone(),
            source,
        };
        // A file that does not exist opens as an empty state held in memory.
        let scratch = tempfile::tempdir().map_err(|e| ProducerError::Local {
            place: place.clone(),
            detail: format!("failed to create a temporary folder: {e}"),
        })?;
        let state = State::open_for_reading(&scratch.path().join("producer.db")).map_err(replay)?;
        for entry in &entries {
            for record in &entry.records {
                state.apply_record(record).map_err(replay)?;
            }
        }
        Ok(state)
    }
}

fn producer_err(e: ProducerError) -> ProviderError {
    ProviderError::Upstream(Box::new(e))
}

#[async_trait]
impl Upstream for Producer {
    fn name(&self) -> String {
        self.place()
    }

    async fn newest_ready(&self, image: &str) -> Result<Option<ReadyVersion>, ProviderError> {
        let state = self.history().await.map_err(producer_err)?;
        // Its current version, which is its newest Ready one when it has one.
        let current = state.current_version(image).map_err(|source| {
            producer_err(ProducerError::Replay {
                place: self.place(),
                source,
            })
        })?;
        Ok(current
            .map(|r| r.version)
            .filter(|v| v.status == ReleaseStatus::Ready)
            .map(|v| ReadyVersion {
                version: v.version,
                artifact_id: v.artifact_id,
            }))
    }
}

/// The producer's store as a local provider reads it: fetch only.
pub struct ProducerStore(pub Arc<Producer>);

impl ProducerStore {
    async fn store(&self) -> Result<&ArtifactStore, SharedError> {
        self.0
            .store()
            .await
            .map_err(|e| SharedError::Store(Box::new(e)))
    }
}

#[async_trait]
impl SharedArtifacts for ProducerStore {
    fn name(&self) -> String {
        match self.0.store.get() {
            Some(store) => store.client().location().to_string(),
            None => format!("the store announced in {}", self.0.place()),
        }
    }

    async fn contains(&self, hex: &str) -> Result<bool, SharedError> {
        self.store().await?.contains(hex).await.map_err(store_err)
    }

    async fn fetch(&self, hex: &str, dest: &Path) -> Result<bool, SharedError> {
        fetch_verified(self.store().await?, hex, dest).await
    }
}
