//! Other projects' images as sources: `source "platform-base" { imgraph image="base" {
//! s3 bucket=… prefix=… region=…; } }` resolves, at every plan, to the newest Ready version
//! of image `base` in the shared state of the project at that place, and its artifact id
//! (`local:<blake3>`) is the source's id: it goes into the keys of the images built from
//! it, so a new Ready version there shows here as `source-changed`.
//!
//! The producer's history is read from its journal and replayed into an empty state in
//! memory by the state's own [`crate::state::State::apply_record`], so what "newest Ready"
//! means (statuses, revocations, version order) is decided by the same code as for this
//! project's own images. Its artifacts are fetched from the producer's shared store,
//! which the producer names in its shared state's place (see `provider::s3`).
//!
//! Behind [`Upstream`], so that only the provider factory knows it is S3.

use async_trait::async_trait;

use super::ProviderError;

/// A version another project made Ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyVersion {
    pub version: String,
    /// `local:<hex>`: the artifact id, the source's id.
    pub artifact_id: String,
}

/// Another project's shared state, read only.
#[async_trait]
pub trait Upstream: Send + Sync {
    /// Names the place in messages (`s3://bucket/prefix/`).
    fn name(&self) -> String;
    /// The newest Ready version of `image` there, if it has one.
    async fn newest_ready(&self, image: &str) -> Result<Option<ReadyVersion>, ProviderError>;
}
