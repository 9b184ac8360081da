//! Team work on object storage: the object client every shared part uses, built from an
//! [`S3Location`], and on it the lease ([`lease`]), the journal of state changes
//! ([`journal`]) and the content-addressed artifact store ([`artifacts`]).
//!
//! Correctness rests on two conditional writes and nothing else (no server of our own,
//! no lock table): a create (`If-None-Match: *`, [`PutMode::Create`]) succeeds for one
//! writer only, and an update (`If-Match: <etag>`, [`PutMode::Update`]) succeeds only if
//! nobody wrote the object since it was read. Some S3-compatible stores accept both
//! headers and ignore them, so [`ObjectClient::check_conditional_writes`] proves at start
//! that this store honours them, and imgraph refuses to share anything on one that does
//! not ([`RemoteError::NoConditionalWrites`]).
//!
//! Failures in between: object_store's [`RetryConfig`] retries a request that got a 5xx,
//! 429 or timeout answer (a 503 on a write is retried). A conditional write whose answer is
//! lost (the connection broke after the request was sent) either fails or, when the
//! connection closed before any answer, is sent again by object_store, whose second
//! attempt then meets our own first write and is refused. So [`ObjectClient::create`] and
//! [`ObjectClient::update`] read the object back after a failure or a refusal: if it holds
//! exactly our bytes, the write was ours. Every body imgraph writes carries a writer token, so two writers never
//! write identical bytes by accident (artifacts excepted: identical bytes are the same
//! artifact, whoever wrote them).

pub mod artifacts;
pub mod journal;
pub mod lease;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};

use crate::config::model::S3Location;

/// What went wrong talking to the object store. Messages read after "failed to ...".
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("connect to the object store {location}: {source}")]
    Connect {
        location: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{op} {object} in {location}: {source}")]
    Store {
        op: &'static str,
        object: String,
        location: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("use {location} for shared work: the store does not honour conditional writes ({detail}); imgraph fences writers with If-None-Match and If-Match, which AWS S3, MinIO, R2 and moto 5 support")]
    NoConditionalWrites { location: String, detail: String },
    #[error("verify {object} in {location}: its bytes hash to {actual}, not to the {expected} its name promises")]
    Corrupt {
        object: String,
        location: String,
        expected: String,
        actual: String,
    },
    #[error("read {object} in {location}: {source}")]
    Decode {
        object: String,
        location: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How an object was read: its bytes and the version a conditional update must match.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub bytes: Bytes,
    pub version: UpdateVersion,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Our bytes are there now; the version to match for the next update.
    Ours(UpdateVersion),
    /// Someone else created the object first, or changed it since we read it.
    Refused,
}

/// Counts of what one client did, for the figures in BENCHMARKS.md.
#[derive(Debug, Default)]
pub struct Counters {
    pub writes: std::sync::atomic::AtomicU64,
    pub reads: std::sync::atomic::AtomicU64,
}

/// One place in a bucket, and the client that reaches it.
#[derive(Debug, Clone)]
pub struct ObjectClient {
    store: Arc<AmazonS3>,
    prefix: ObjectPath,
    location: S3Location,
    counters: Arc<Counters>,
}

/// Retries for the shared state: a few quick attempts (a runner waits on them), backing
/// off to a few seconds.
pub fn default_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: Duration::from_secs(60),
    }
}

impl ObjectClient {
    /// A client for `location` with credentials from the standard AWS chain (environment
    /// variables, profile, instance role). Requests are path-style, so any S3-compatible
    /// endpoint works; an `http://` endpoint is allowed (a server on loopback).
    pub fn new(location: &S3Location) -> Result<Self, RemoteError> {
        Self::with_retry(location, default_retry())
    }

    pub fn with_retry(location: &S3Location, retry: RetryConfig) -> Result<Self, RemoteError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_region(&location.region)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(retry)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300)),
            );
        if let Some(endpoint) = &location.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build().map_err(|source| RemoteError::Connect {
            location: location.to_string(),
            source: Box::new(source),
        })?;
        Ok(ObjectClient {
            store: Arc::new(store),
            prefix: ObjectPath::from(location.prefix.as_str()),
            location: location.clone(),
            counters: Arc::default(),
        })
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The full key of `name` (a `/`-separated name under the prefix).
    pub fn path(&self, name: &str) -> ObjectPath {
        name.split('/')
            .filter(|s| !s.is_empty())
            .fold(self.prefix.clone(), |p, seg| p.join(seg))
    }

    fn err(
        &self,
        op: &'static str,
        object: &ObjectPath,
        source: object_store::Error,
    ) -> RemoteError {
        RemoteError::Store {
            op,
            object: object.to_string(),
            location: self.location.to_string(),
            source: Box::new(source),
        }
    }

    fn count_write(&self) {
        self.counters
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn count_read(&self) {
        self.counters
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The object's bytes and version, or `None` when there is none.
    pub async fn read(&self, name: &str) -> Result<Option<Versioned>, RemoteError> {
        let path = self.path(name);
        self.read_path(&path).await
    }

    async fn read_path(&self, path: &ObjectPath) -> Result<Option<Versioned>, RemoteError> {
        self.count_read();
        let got = match self.store.get(path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err("read", path, e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got.bytes().await.map_err(|e| self.err("read", path, e))?;
        Ok(Some(Versioned { bytes, version }))
    }

    /// Creates the object if there is none (If-None-Match). A lost answer is resolved by
    /// reading the object back: our bytes there mean the create was ours.
    pub async fn create(&self, name: &str, body: Bytes) -> Result<Written, RemoteError> {
        let path = self.path(name);
        self.conditional(&path, body, PutMode::Create, true).await
    }

    /// Creates a content-addressed object (its name is the hash of its bytes) if there is
    /// none. `Refused` means it is there: whoever wrote it wrote these bytes (a reader
    /// verifies them), so there is nothing to read back.
    pub async fn create_content_addressed(
        &self,
        name: &str,
        body: Bytes,
    ) -> Result<Written, RemoteError> {
        let path = self.path(name);
        self.conditional(&path, body, PutMode::Create, false).await
    }

    /// Replaces the object if it is still at `version` (If-Match on its ETag).
    pub async fn update(
        &self,
        name: &str,
        body: Bytes,
        version: &UpdateVersion,
    ) -> Result<Written, RemoteError> {
        let path = self.path(name);
        self.conditional(&path, body, PutMode::Update(version.clone()), true)
            .await
    }

    async fn conditional(
        &self,
        path: &ObjectPath,
        body: Bytes,
        mode: PutMode,
        read_back_refusal: bool,
    ) -> Result<Written, RemoteError> {
        // Tried again only when the answer was lost and the object shows the write did
        // not happen.
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.count_write();
            let opts = PutOptions {
                mode: mode.clone(),
                ..PutOptions::default()
            };
            let (refused, err) = match self
                .store
                .put_opts(path, PutPayload::from_bytes(body.clone()), opts)
                .await
            {
                Ok(put) => {
                    return Ok(Written::Ours(UpdateVersion {
                        e_tag: put.e_tag,
                        version: put.version,
                    }))
                }
                // Refused, but possibly by our own earlier attempt: object_store resends
                // a request whose connection closed before the answer, taking it for
                // unsent, and the resent create then meets our own object.
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) if !read_back_refusal => return Ok(Written::Refused),
                Err(
                    e @ (object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }),
                ) => (true, e),
                Err(e) if !outcome_unknown(&e) => return Err(self.err("write", path, e)),
                Err(e) => (false, e),
            };
            if !refused {
                tracing::debug!(object = %path, error = %err, "write answer lost; reading it back");
            }
            match self.read_path(path).await {
                Ok(Some(found)) if found.bytes == body => return Ok(Written::Ours(found.version)),
                Ok(Some(_)) if refused => return Ok(Written::Refused),
                // Someone else's bytes; for an update still at the version we expected,
                // our write did not happen: try it again.
                Ok(Some(found)) => match &mode {
                    PutMode::Update(v) if found.version.e_tag == v.e_tag && attempts < 3 => {
                        continue
                    }
                    _ => return Ok(Written::Refused),
                },
                Ok(None) => match mode {
                    PutMode::Create if attempts < 3 => continue,
                    PutMode::Update(_) => return Ok(Written::Refused),
                    _ if refused => return Ok(Written::Refused),
                    _ => return Err(self.err("write", path, err)),
                },
                Err(_) if refused => return Ok(Written::Refused),
                Err(_) => return Err(self.err("write", path, err)),
            }
        }
    }

    /// Deletes the object (absent is fine).
    pub async fn delete(&self, name: &str) -> Result<(), RemoteError> {
        let path = self.path(name);
        self.count_write();
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", &path, e)),
        }
    }

    /// Names (relative to the prefix, `/`-separated) under `dir` that sort after `after`,
    /// in order.
    pub async fn list_after(&self, dir: &str, after: &str) -> Result<Vec<String>, RemoteError> {
        use futures_util::TryStreamExt;
        let dir_path = self.path(dir);
        let offset = self.path(after);
        self.count_read();
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list_with_offset(Some(&dir_path), &offset)
            .try_collect()
            .await
            .map_err(|e| self.err("list", &dir_path, e))?;
        let strip = if self.prefix.as_ref().is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix.as_ref())
        };
        let mut names: Vec<String> = metas
            .into_iter()
            .filter_map(|m| {
                m.location
                    .as_ref()
                    .strip_prefix(strip.as_str())
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Proves that the store honours If-None-Match and If-Match on a probe object under
    /// `check/`, and removes it: a second create must be refused, an update with a stale
    /// version must be refused, one with the current version must succeed. Without this a
    /// store that ignores the headers would let two runners both "win" the lease.
    ///
    /// It is a property of the store (endpoint and bucket), not of a prefix: a process
    /// proves it once per store, so a shared state and a shared store in one bucket cost
    /// one probe at start, not two.
    pub async fn check_conditional_writes(&self) -> Result<(), RemoteError> {
        static PROVEN: Mutex<BTreeSet<(Option<String>, String)>> = Mutex::new(BTreeSet::new());
        let proven = || PROVEN.lock().unwrap_or_else(PoisonError::into_inner);
        let store = (self.location.endpoint.clone(), self.location.bucket.clone());
        if proven().contains(&store) {
            return Ok(());
        }
        self.probe_conditional_writes().await?;
        proven().insert(store);
        Ok(())
    }

    /// The probe behind [`Self::check_conditional_writes`], run every time it is called.
    pub async fn probe_conditional_writes(&self) -> Result<(), RemoteError> {
        let name = format!("check/{}.json", writer_token());
        let refuse = |detail: &str| RemoteError::NoConditionalWrites {
            location: self.location.to_string(),
            detail: detail.to_owned(),
        };
        let first = match self
            .create(&name, Bytes::from_static(b"{\"probe\":1}"))
            .await?
        {
            Written::Ours(v) => v,
            Written::Refused => return Err(refuse("a create of a new probe object was refused")),
        };
        let result = async {
            if self
                .create(&name, Bytes::from_static(b"{\"probe\":2}"))
                .await?
                != Written::Refused
            {
                return Err(refuse(
                    "a second create (If-None-Match: *) overwrote the object",
                ));
            }
            let second = match self
                .update(&name, Bytes::from_static(b"{\"probe\":3}"), &first)
                .await?
            {
                Written::Ours(v) => v,
                Written::Refused => {
                    return Err(refuse(
                        "an update with the current ETag (If-Match) was refused",
                    ))
                }
            };
            if second.e_tag.is_none() || second.e_tag == first.e_tag {
                return Err(refuse("the store gives no new ETag for a changed object"));
            }
            if self
                .update(&name, Bytes::from_static(b"{\"probe\":4}"), &first)
                .await?
                != Written::Refused
            {
                return Err(refuse(
                    "an update with a stale ETag (If-Match) was accepted",
                ));
            }
            Ok(())
        }
        .await;
        let removed = self.delete(&name).await;
        result.and(removed)
    }
}

/// Whether a failed request may have been carried out (its answer was lost or it failed
/// after the retries): only reading the object tells.
fn outcome_unknown(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

/// This machine's name, for lease holders and writer tokens.
pub fn host() -> String {
    crate::host::name().unwrap_or("unknown-host").to_owned()
}

/// A token no other writer uses: host, process id and the time it was made, so that a
/// body read back after a lost answer is recognised as ours and nobody else's.
pub fn writer_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}-{nanos:x}", host(), std::process::id())
}
