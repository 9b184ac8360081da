//! The journal of a shared state: one object per append, `journal/<seq>.json` with the
//! sequence number zero-padded to 20 digits, so names sort in sequence order and listing
//! from a name reads everything after it.
//!
//! An append of sequence N creates its object with If-None-Match: of two writers that both
//! read the journal up to N-1, one creates N and the other is refused with
//! [`JournalError::Conflict`]; it must read what it missed and decide again. That is the
//! fencing: a runner that lost its lease cannot record anything on top of the new
//! holder's records without having read them.
//!
//! Each object holds one batch of records (what one outcome changed), the writer's token
//! and the time. Objects are never rewritten.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{writer_token, ObjectClient, RemoteError, Written};

const JOURNAL_DIR: &str = "journal";
const FORMAT_VERSION: u32 = 1;

/// A sequence number: 0 is the empty journal, the first append is 1.
pub type Seq = u64;

/// One journal object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry<T> {
    pub format_version: u32,
    pub seq: Seq,
    /// Who wrote it (see [`writer_token`]).
    pub writer: String,
    pub written_ms: u64,
    pub records: Vec<T>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("append entry {seq} to the shared journal: another runner wrote it first; read the journal again and retry")]
    Conflict { seq: Seq },
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// The journal of one shared state.
#[derive(Debug, Clone)]
pub struct ObjectJournal {
    client: ObjectClient,
    writer: String,
}

fn name_of(seq: Seq) -> String {
    format!("{JOURNAL_DIR}/{seq:020}.json")
}

fn seq_of(name: &str) -> Option<Seq> {
    let digits = name
        .strip_prefix(JOURNAL_DIR)?
        .strip_prefix('/')?
        .strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl ObjectJournal {
    pub fn new(client: ObjectClient) -> Self {
        ObjectJournal {
            client,
            writer: writer_token(),
        }
    }

    /// Appends `records` as entry `after + 1`, if nobody wrote it yet.
    pub async fn append<T: Serialize>(
        &self,
        after: Seq,
        records: &[T],
    ) -> Result<Seq, JournalError> {
        let seq = after + 1;
        let name = name_of(seq);
        let entry = Entry::<&T> {
            format_version: FORMAT_VERSION,
            seq,
            writer: self.writer.clone(),
            written_ms: super::lease::now_ms(),
            records: records.iter().collect(),
        };
        let body = serde_json::to_vec(&entry).map_err(|source| RemoteError::Decode {
            object: self.client.path(&name).to_string(),
            location: self.client.location().to_string(),
            source,
        })?;
        match self.client.create(&name, body.into()).await? {
            Written::Ours(_) => Ok(seq),
            Written::Refused => Err(JournalError::Conflict { seq }),
        }
    }

    /// Every entry after `seq`, in order.
    pub async fn read_since<T: DeserializeOwned>(
        &self,
        seq: Seq,
    ) -> Result<Vec<Entry<T>>, RemoteError> {
        let names = self.client.list_after(JOURNAL_DIR, &name_of(seq)).await?;
        let mut entries = Vec::new();
        for name in names.iter().filter(|n| seq_of(n).is_some_and(|s| s > seq)) {
            // Listed, so it exists: objects are never deleted while runners read.
            let Some(found) = self.client.read(name).await? else {
                continue;
            };
            let entry: Entry<T> =
                serde_json::from_slice(&found.bytes).map_err(|source| RemoteError::Decode {
                    object: self.client.path(name).to_string(),
                    location: self.client.location().to_string(),
                    source,
                })?;
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The last sequence number written (0 for an empty journal).
    pub async fn head(&self) -> Result<Seq, RemoteError> {
        let names = self.client.list_after(JOURNAL_DIR, &name_of(0)).await?;
        Ok(names.iter().filter_map(|n| seq_of(n)).max().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_sequence_order_and_parse_back() {
        let names: Vec<String> = [1, 9, 10, 100, 99_999].map(name_of).to_vec();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(name_of(42), "journal/00000000000000000042.json");
        assert_eq!(seq_of(&name_of(42)), Some(42));
        assert_eq!(seq_of("journal/42.json"), None);
        assert_eq!(seq_of("lease.json"), None);
    }
}
