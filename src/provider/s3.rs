//! The provider side of sharing on S3 (feature `s3`): [`SharedArtifacts`] and
//! [`OwnArtifacts`] on the content-addressed store of `remote::artifacts`, and the
//! project's store announced in its shared state's place.
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

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::local::{OwnArtifacts, SharedArtifacts, SharedError};
use crate::config::model::S3Location;
use crate::remote::artifacts::{ArtifactStore, Published};
use crate::remote::{ObjectClient, RemoteError, Written};

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
