//! The stat cache: project-relative path -> what the file looked like when it was hashed.
//!
//! The hasher decides whether a cached digest still holds (size, times, inode and mode
//! unchanged, and the entry not racy: see `hash/cache.rs`); this module only keeps the
//! entries. They live in one binary file beside the state file (`state.db-statcache`,
//! [`STAT_CACHE_SUFFIX`]), like git's index, not in SQLite: every plan reads every entry
//! (20,000 for a 20,000-file tree), and stepping 20,000 rows and parsing three decimal
//! times each was 30 % of a no-change plan; one read of one file is a small part of that.
//!
//! The file is an entry of [`crate::cachefile`]: keyed by this encoding's [`FORMAT`],
//! imgraph's version and the encoding of file digests ([`FILE_DOMAIN`]), and checked by
//! its blake3. A file of another imgraph or digest encoding, cut short or damaged, reads
//! as an empty cache: every file is read again, never a digest taken on trust from it.
//! A whole file whose entries are stale is harmless for the same reason as before: each
//! entry is compared with the file's metadata at every plan.
//!
//! Writing merges the new entries into those on disk and replaces the whole file
//! (temporary file and rename), so a reader sees the old file or the new one. Two
//! processes writing at once each replace the file: one's new entries are lost, which
//! costs a read of those files next time, never a wrong digest. Writing is best effort (a
//! cache is not worth failing a plan over): a failure is logged and the files are read
//! again next time. A state held in memory (no state file yet) keeps no stat cache.
//! Entries of files that are gone stay until the file is written again; nothing looks
//! them up.

use std::path::PathBuf;

use super::{StatEntry, State};
use crate::cachefile::{self, put_str, put_u64, Reader};
use crate::config::model::STAT_CACHE_SUFFIX;
use crate::hash::{StatMap, FILE_DOMAIN};

/// Bump when the encoding below changes: files in the old one then read as empty.
const FORMAT: u32 = 1;

const MAGIC: &[u8; 8] = b"imgraphS";

/// A larger file is not read (about 170 bytes an entry: millions of files).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// Bytes of an entry besides its path's and digest's: two lengths, size, three times,
/// inode and mode.
const FIXED_BYTES: usize = 8 + 8 + 8 + 16 + 16 + 16 + 8 + 4;

fn key() -> blake3::Hash {
    cachefile::key(MAGIC, FORMAT, FILE_DOMAIN.as_bytes())
}

impl State {
    /// Where this state keeps its stat cache; `None` for a state in memory.
    fn stat_cache_file(&self) -> Option<PathBuf> {
        self.on_disk().then(|| {
            let mut file = self.path.clone().into_os_string();
            file.push(STAT_CACHE_SUFFIX);
            PathBuf::from(file)
        })
    }

    /// The cached entries; empty when there is no cache, or it is of another imgraph,
    /// cut or damaged.
    pub fn load_stat_cache(&self) -> StatMap {
        let Some(file) = self.stat_cache_file() else {
            return StatMap::default();
        };
        match cachefile::read(&file, MAX_FILE_BYTES) {
            Ok(bytes) => decode(&bytes).unwrap_or_else(|| {
                tracing::warn!(path = %file.display(), "stat cache is of another imgraph or damaged: every input file is read");
                StatMap::default()
            }),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %file.display(), error = %e, "stat cache not read: every input file is read");
                }
                StatMap::default()
            }
        }
    }

    /// Inserts or replaces `entries` (best effort). Entries not listed are kept.
    pub fn store_stat_cache(&self, entries: &[(String, StatEntry)]) {
        let Some(file) = self.stat_cache_file().filter(|_| !entries.is_empty()) else {
            return;
        };
        let mut all = self.load_stat_cache();
        all.extend(entries.iter().cloned());
        if let Err(e) = cachefile::write(&file, &encode(&all)) {
            tracing::warn!(path = %file.display(), error = %e, "stat cache not written");
        }
    }
}

/// The entries sorted by path (the same entries give the same bytes).
fn encode(entries: &StatMap) -> Vec<u8> {
    let mut sorted: Vec<(&String, &StatEntry)> = entries.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = cachefile::begin(MAGIC, &key(), entries.len() * (FIXED_BYTES + 100));
    put_u64(&mut out, sorted.len() as u64);
    for (path, e) in sorted {
        put_str(&mut out, path);
        put_u64(&mut out, e.size);
        out.extend_from_slice(&e.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.ctime_ns.to_le_bytes());
        put_u64(&mut out, e.inode);
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&e.recorded_at_ns.to_le_bytes());
        put_str(&mut out, &e.digest);
    }
    cachefile::finish(out)
}

fn decode(bytes: &[u8]) -> Option<StatMap> {
    let mut r = Reader::new(cachefile::open(bytes, MAGIC, &key())?);
    let n = r.count(FIXED_BYTES)?;
    let mut out = StatMap::with_capacity_and_hasher(n, Default::default());
    for _ in 0..n {
        let path = r.string()?;
        let entry = StatEntry {
            size: r.u64()?,
            mtime_ns: r.i128()?,
            ctime_ns: r.i128()?,
            inode: r.u64()?,
            mode: r.u32()?,
            recorded_at_ns: r.i128()?,
            digest: r.string()?,
        };
        out.insert(path, entry);
    }
    r.is_done().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str) -> StatEntry {
        StatEntry {
            size: 3,
            mtime_ns: -7,
            ctime_ns: i128::MAX,
            inode: u64::MAX,
            mode: 0o100644,
            digest: digest.into(),
            recorded_at_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn entries_round_trip_through_the_encoding() {
        let map: StatMap = [
            ("a".to_string(), entry("b3v1:aa")),
            ("b/é".into(), entry("")),
        ]
        .into_iter()
        .collect();
        assert_eq!(decode(&encode(&map)), Some(map.clone()));
        assert_eq!(
            encode(&map),
            encode(&map.clone()),
            "same entries, same bytes"
        );
    }

    #[test]
    fn a_damaged_or_cut_file_reads_as_nothing() {
        let map: StatMap = [("a".to_string(), entry("b3v1:aa"))].into_iter().collect();
        let bytes = encode(&map);
        for at in [0, 9, 50, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(decode(&bad), None, "flipped byte {at}");
        }
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(b""), None);
    }
}
