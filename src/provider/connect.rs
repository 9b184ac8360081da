//! The provider factory: connects the providers a project declares. Which providers this
//! build of imgraph includes (`cfg(feature = "aws")`) and whether it can share artifacts
//! on object storage (`cfg(feature = "s3")`) is decided here and in this module's
//! declarations only; callers see [`Providers`] and the [`Provider`] trait, whose optional
//! capabilities (resolving a source, sweeping tagged leftovers, recorded versions) answer
//! "unsupported" or "none" for providers that lack them, and the local provider sees a
//! shared store only as [`SharedArtifacts`].

use std::collections::HashMap;
use std::sync::Arc;

use super::local::{LocalProvider, OwnArtifacts, SharedArtifacts, SharedStores, Store};
use super::upstream::Upstream;
use super::{Provider, ProviderError};
use crate::config::model::{Project, ProviderKind, ProviderType, S3Location, SourceKind};

/// The providers a project declares, connected and ready.
#[derive(Clone, Default)]
pub struct Providers {
    /// Provider name → implementation. A project declares each provider at most once, so
    /// a provider's name is its type's name.
    pub all: HashMap<String, Arc<dyn Provider>>,
    /// Source name → the other project an `imgraph` source reads.
    pub upstream: HashMap<String, Arc<dyn Upstream>>,
}

impl Providers {
    /// The provider of type `provider`, when the project declares it.
    pub fn of_type(&self, provider: ProviderType) -> Option<&Arc<dyn Provider>> {
        self.all.get(provider.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The project declares a provider this build of imgraph was compiled without.
    #[error("provider `{name}` is not part of this build of imgraph")]
    Unavailable {
        name: String,
        provider: ProviderType,
    },
    #[error("failed to set up the {provider} provider")]
    Setup {
        provider: ProviderType,
        #[source]
        source: ProviderError,
    },
}

/// Connects every provider `project` declares.
pub async fn connect(project: &Project) -> Result<Providers, ConnectError> {
    let mut out = Providers::default();
    // Other projects' images: their state is read to resolve the source, their store to
    // fetch its artifact (by the local provider, which builds from it).
    let mut upstream_stores = Vec::new();
    for source in &project.sources {
        if let SourceKind::Imgraph { state, .. } = &source.kind {
            let (upstream, store) = producer(state)?;
            out.upstream.insert(source.name.clone(), upstream);
            upstream_stores.push(store);
        }
    }
    for p in &project.providers {
        let provider: Arc<dyn Provider> = match &p.kind {
            ProviderKind::Local { store, sandbox } => {
                let shared = SharedStores {
                    own: p
                        .shared_store
                        .as_ref()
                        .map(|place| {
                            let state = project.shared_state.as_ref().map(|s| &s.location);
                            shared_store(place, state)
                        })
                        .transpose()?,
                    upstream: upstream_stores.clone(),
                };
                Arc::new(
                    LocalProvider::new(Store::new(store.clone()), *sandbox).with_shared(shared),
                )
            }
            #[cfg(feature = "aws")]
            ProviderKind::Aws {
                region,
                profile,
                endpoint,
            } => {
                let aws = super::aws::AwsProvider::connect(
                    region.as_deref(),
                    profile.as_deref(),
                    endpoint.as_deref(),
                )
                .await
                .map_err(|source| ConnectError::Setup {
                    provider: ProviderType::Aws,
                    source,
                })?;
                Arc::new(aws.with_project(leftover_scope(project)))
            }
            #[cfg(not(feature = "aws"))]
            ProviderKind::Aws { .. } => {
                return Err(ConnectError::Unavailable {
                    name: p.name.clone(),
                    provider: ProviderType::Aws,
                })
            }
        };
        out.all.insert(p.name.clone(), provider);
    }
    Ok(out)
}

/// Scopes leftover clean-up to this project: its folder name plus a digest of its path,
/// so two checkouts never reap each other's instances.
#[cfg(feature = "aws")]
fn leftover_scope(project: &Project) -> String {
    let folder = project
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "imgraph".into());
    let path_digest = blake3::hash(project.root.to_string_lossy().as_bytes()).to_hex();
    format!("{folder}-{}", &path_digest[..8])
}

/// The project's own shared artifact store at `place`, on S3, announced in the project's
/// shared state's place when it has one (see `provider::s3`).
#[cfg(feature = "s3")]
fn shared_store(
    place: &S3Location,
    state: Option<&S3Location>,
) -> Result<Arc<dyn OwnArtifacts>, ConnectError> {
    let own = super::s3::OwnStore::connect(place, state).map_err(|e| ConnectError::Setup {
        provider: ProviderType::Local,
        source: ProviderError::Local(super::local::LocalError::Shared {
            op: "connect to",
            subject: "the store".into(),
            store: place.to_string(),
            source: Box::new(super::local::SharedError::Store(Box::new(e))),
        }),
    })?;
    Ok(Arc::new(own))
}

/// Without the `s3` feature a shared store cannot be used: refused rather than ignored,
/// so that nobody believes artifacts are shared when they are not.
#[cfg(not(feature = "s3"))]
fn shared_store(
    _place: &S3Location,
    _state: Option<&S3Location>,
) -> Result<Arc<dyn OwnArtifacts>, ConnectError> {
    Err(ConnectError::Setup {
        provider: ProviderType::Local,
        source: ProviderError::Unsupported {
            provider: "local",
            capability: "share artifacts on S3 in this build of imgraph (it was built without the `s3` feature)",
        },
    })
}

/// Another project an `imgraph` source reads: its history, and its store to fetch from.
type Producer = (Arc<dyn Upstream>, Arc<dyn SharedArtifacts>);

/// The other project at `state` (an `imgraph` source): its history and its store.
#[cfg(feature = "s3")]
fn producer(state: &S3Location) -> Result<Producer, ConnectError> {
    let producer = super::s3::Producer::connect(state).map_err(|e| ConnectError::Setup {
        provider: ProviderType::Local,
        source: ProviderError::Upstream(Box::new(e)),
    })?;
    let producer = Arc::new(producer);
    let store = Arc::new(super::s3::ProducerStore(producer.clone()));
    Ok((producer, store))
}

/// Without the `s3` feature another project's shared state cannot be read.
#[cfg(not(feature = "s3"))]
fn producer(_state: &S3Location) -> Result<Producer, ConnectError> {
    Err(ConnectError::Setup {
        provider: ProviderType::Local,
        source: ProviderError::Unsupported {
            provider: "local",
            capability: "read other projects' shared state in this build of imgraph (it was built without the `s3` feature)",
        },
    })
}
