//! The lease on a shared state: one object, `lease.json`, under the state's prefix.
//!
//! - **acquire**: create it (If-None-Match). If it exists and is released, or its
//!   heartbeat is older than the lease's time to live, replace it with an update on the
//!   ETag just read (If-Match): of two runners taking over the same stale lease, only one
//!   update matches, the other is refused and sees the winner as the holder.
//! - **renew**: an update on the ETag of our last write, with a new heartbeat. Refused
//!   means someone took the lease over (ours had gone stale): the holder has lost it.
//! - **release** and **break**: an update to a released record on the ETag read, never a
//!   plain delete, so a release can never remove a lease someone else has just taken.
//!
//! Staleness is judged with the reader's clock against the heartbeat the holder wrote with
//! its own: runners whose clocks differ by more than a fraction of the time to live should
//! use a longer `lease-ttl`.

use serde::{Deserialize, Serialize};

use object_store::UpdateVersion;

use super::{writer_token, ObjectClient, RemoteError, Written};

/// The lease object's name under the state's prefix.
pub const LEASE_OBJECT: &str = "lease.json";
const FORMAT_VERSION: u32 = 1;

/// What the lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub format_version: u32,
    /// What holds it, in the user's words (`imgraph apply`).
    pub holder: String,
    pub host: String,
    pub pid: u32,
    /// The command line of the holder.
    pub command: String,
    /// Unique per acquisition: tells our own write from another runner's.
    pub token: String,
    /// Milliseconds since the Unix epoch.
    pub acquired_ms: u64,
    pub heartbeat_ms: u64,
    /// Released (or broken): free for the next runner.
    pub released: bool,
}

/// A lease this process holds, with the version its next renewal must match.
#[derive(Debug, Clone)]
pub struct HeldLease {
    pub record: LeaseRecord,
    version: UpdateVersion,
}

#[derive(Debug, Clone)]
pub enum Acquired {
    /// Ours; `took_over` is the stale lease it replaced, if any.
    Held {
        lease: HeldLease,
        took_over: Option<LeaseRecord>,
    },
    /// Someone else holds it (heartbeat within the time to live).
    HeldBy(LeaseRecord),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    Renewed,
    /// Another runner replaced our lease (it had gone stale); it holds this now.
    Lost(Option<LeaseRecord>),
}

/// The lease as `lock status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    pub record: LeaseRecord,
    /// The heartbeat is older than the time to live: the next runner takes it over.
    pub stale: bool,
}

/// The lease of one shared state.
#[derive(Debug, Clone)]
pub struct ObjectLease {
    client: ObjectClient,
    ttl: std::time::Duration,
}

impl ObjectLease {
    pub fn new(client: ObjectClient, ttl: std::time::Duration) -> Self {
        ObjectLease { client, ttl }
    }

    pub fn ttl(&self) -> std::time::Duration {
        self.ttl
    }

    /// Takes the lease for `holder`, or says who holds it.
    pub async fn acquire(&self, holder: &str, command: &str) -> Result<Acquired, RemoteError> {
        let now = now_ms();
        let mine = LeaseRecord {
            format_version: FORMAT_VERSION,
            holder: holder.to_owned(),
            host: super::host(),
            pid: std::process::id(),
            command: command.to_owned(),
            token: writer_token(),
            acquired_ms: now,
            heartbeat_ms: now,
            released: false,
        };
        let body = self.encode(&mine)?;
        // The object may change between our reads and writes (released, deleted, taken):
        // each round reads it afresh; a few rounds settle any interleaving.
        for _ in 0..5 {
            let Some((current, version)) = self.read().await? else {
                match self.client.create(LEASE_OBJECT, body.clone()).await? {
                    Written::Ours(version) => {
                        return Ok(Acquired::Held {
                            lease: HeldLease {
                                record: mine,
                                version,
                            },
                            took_over: None,
                        })
                    }
                    Written::Refused => continue,
                }
            };
            let free = current.released || self.is_stale(&current, now_ms());
            if !free {
                return Ok(Acquired::HeldBy(current));
            }
            match self
                .client
                .update(LEASE_OBJECT, body.clone(), &version)
                .await?
            {
                Written::Ours(version) => {
                    let took_over = (!current.released).then_some(current);
                    if let Some(old) = &took_over {
                        tracing::warn!(holder = %old.holder, host = %old.host, pid = old.pid, "took over a stale lease");
                    }
                    return Ok(Acquired::Held {
                        lease: HeldLease {
                            record: mine,
                            version,
                        },
                        took_over,
                    });
                }
                Written::Refused => continue,
            }
        }
        match self.read().await? {
            Some((current, _)) => Ok(Acquired::HeldBy(current)),
            None => Err(RemoteError::NoConditionalWrites {
                location: self.client.location().to_string(),
                detail: "the lease object kept changing between reads and conditional writes"
                    .to_owned(),
            }),
        }
    }

    /// Writes a new heartbeat, if the lease is still ours.
    pub async fn renew(&self, lease: &mut HeldLease) -> Result<Renewed, RemoteError> {
        let mut next = lease.record.clone();
        next.heartbeat_ms = now_ms();
        let body = self.encode(&next)?;
        match self
            .client
            .update(LEASE_OBJECT, body, &lease.version)
            .await?
        {
            Written::Ours(version) => {
                lease.record = next;
                lease.version = version;
                Ok(Renewed::Renewed)
            }
            Written::Refused => Ok(Renewed::Lost(self.read().await?.map(|(r, _)| r))),
        }
    }

    /// Gives the lease up; false when it was no longer ours (someone took it over).
    pub async fn release(&self, lease: HeldLease) -> Result<bool, RemoteError> {
        let mut next = lease.record;
        next.released = true;
        next.heartbeat_ms = now_ms();
        let body = self.encode(&next)?;
        Ok(matches!(
            self.client
                .update(LEASE_OBJECT, body, &lease.version)
                .await?,
            Written::Ours(_)
        ))
    }

    /// Who holds the lease, if anyone.
    pub async fn status(&self) -> Result<Option<LeaseStatus>, RemoteError> {
        Ok(self
            .read()
            .await?
            .filter(|(r, _)| !r.released)
            .map(|(record, _)| LeaseStatus {
                stale: self.is_stale(&record, now_ms()),
                record,
            }))
    }

    /// Frees the lease whoever holds it (`lock break`: the caller decides it is safe).
    /// Returns the lease it broke, if one was held.
    pub async fn break_lease(&self) -> Result<Option<LeaseRecord>, RemoteError> {
        for _ in 0..5 {
            let Some((current, version)) = self.read().await? else {
                return Ok(None);
            };
            if current.released {
                return Ok(None);
            }
            let mut next = current.clone();
            next.released = true;
            let body = self.encode(&next)?;
            if let Written::Ours(_) = self.client.update(LEASE_OBJECT, body, &version).await? {
                return Ok(Some(current));
            }
        }
        Ok(self.read().await?.map(|(r, _)| r))
    }

    fn is_stale(&self, record: &LeaseRecord, now: u64) -> bool {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(record.heartbeat_ms) > ttl
    }

    async fn read(&self) -> Result<Option<(LeaseRecord, UpdateVersion)>, RemoteError> {
        let Some(found) = self.client.read(LEASE_OBJECT).await? else {
            return Ok(None);
        };
        let record =
            serde_json::from_slice(&found.bytes).map_err(|source| RemoteError::Decode {
                object: self.client.path(LEASE_OBJECT).to_string(),
                location: self.client.location().to_string(),
                source,
            })?;
        Ok(Some((record, found.version)))
    }

    fn encode(&self, record: &LeaseRecord) -> Result<bytes::Bytes, RemoteError> {
        serde_json::to_vec(record)
            .map(bytes::Bytes::from)
            .map_err(|source| RemoteError::Decode {
                object: self.client.path(LEASE_OBJECT).to_string(),
                location: self.client.location().to_string(),
                source,
            })
    }
}

/// The clock ([`crate::host::now_ms`]) as the lease records it.
pub(crate) fn now_ms() -> u64 {
    u64::try_from(crate::host::now_ms()).unwrap_or(0)
}
