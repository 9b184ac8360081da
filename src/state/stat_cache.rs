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
//! A plan does not decode the file into a map: it keeps the bytes, notes where each entry
//! starts in a hash table keyed by the path's hash (one pass that also checks the entries
//! are whole and sorted by path, as they are written), and decodes only the entry a path
//! finds ([`StatFile`]). Decoding 20,000 entries into owned paths and digests in a map was
//! a fifth of a no-change plan's instructions, for one lookup of each.
//!
//! Writing merges the new entries into those on disk and replaces the whole file
//! (temporary file and rename), so a reader sees the old file or the new one. Two
//! processes writing at once each replace the file: one's new entries are lost, which
//! costs a read of those files next time, never a wrong digest. Writing is best effort (a
//! cache is not worth failing a plan over): a failure is logged and the files are read
//! again next time. A state held in memory (no state file yet) keeps no stat cache.
//! Entries of files that are gone stay until the file is written again; nothing looks
//! them up.

use std::hash::BuildHasher;
use std::ops::Range;
use std::path::PathBuf;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use super::{StatEntry, State};
use crate::cachefile::{self, put_str, put_u64, Reader};
use crate::config::model::STAT_CACHE_SUFFIX;
use crate::hash::{StatEntries, StatMap, FILE_DOMAIN};

/// Bump when the encoding below changes: files in the old one then read as empty.
const FORMAT: u32 = 1;

const MAGIC: &[u8; 8] = b"imgraphS";

/// A larger file is not read (about 170 bytes an entry: millions of files).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// Bytes between an entry's path and its digest: size, two times, inode, mode, the time
/// it was recorded.
const STAT_BYTES: usize = 8 + 16 + 16 + 8 + 4 + 16;

/// Bytes of an entry besides its path's and digest's: their two lengths and the above.
const FIXED_BYTES: usize = 8 + STAT_BYTES + 8;

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

    /// The stat cache file and its bytes, when there is one to read (a failure to read it
    /// is logged: every input file is then read).
    fn read_stat_cache(&self) -> Option<(PathBuf, Vec<u8>)> {
        let file = self.stat_cache_file()?;
        match cachefile::read(&file, MAX_FILE_BYTES) {
            Ok(bytes) => Some((file, bytes)),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %file.display(), error = %e, "stat cache not read: every input file is read");
                }
                None
            }
        }
    }

    /// The cached entries; empty when there is no cache, or it is of another imgraph,
    /// cut or damaged.
    pub fn load_stat_cache(&self) -> StatFile {
        let Some((file, bytes)) = self.read_stat_cache() else {
            return StatFile::default();
        };
        StatFile::index(bytes).unwrap_or_else(|| {
            tracing::warn!(path = %file.display(), "stat cache is of another imgraph or damaged: every input file is read");
            StatFile::default()
        })
    }

    /// Inserts or replaces `entries` (best effort). Entries not listed are kept: the file
    /// as it is now on disk is decoded whole (no lookup table: nothing is looked up).
    pub fn store_stat_cache(&self, entries: &[(String, StatEntry)]) {
        let Some(file) = self.stat_cache_file().filter(|_| !entries.is_empty()) else {
            return;
        };
        let mut all = self
            .read_stat_cache()
            .and_then(|(_, bytes)| decode(cachefile::open(&bytes, MAGIC, &key())?))
            .unwrap_or_default();
        all.extend(entries.iter().cloned());
        if let Err(e) = cachefile::write(&file, &encode(&all)) {
            tracing::warn!(path = %file.display(), error = %e, "stat cache not written");
        }
    }
}

/// The stat cache file's bytes and where each entry starts in them.
#[derive(Debug, Default)]
pub struct StatFile {
    bytes: Vec<u8>,
    payload: Range<usize>,
    /// Offset in the payload of each entry, found by its path's hash.
    starts: HashTable<u32>,
    hasher: FixedState,
}

impl StatFile {
    /// Checks the envelope and each entry's shape, and that paths strictly ascend (as
    /// they are written: no path twice); `None` for anything else. Paths and digests are
    /// checked to be UTF-8 only when an entry is read.
    fn index(bytes: Vec<u8>) -> Option<StatFile> {
        let payload = cachefile::open_range(&bytes, MAGIC, &key())?;
        let body = &bytes[payload.clone()];
        let hasher = FixedState::default();
        let mut r = Reader::new(body);
        let n = r.count(FIXED_BYTES)?;
        let mut starts = HashTable::with_capacity(n);
        let mut last: Option<&[u8]> = None;
        for _ in 0..n {
            let start = u32::try_from(r.position()).ok()?;
            let len = r.usize()?;
            let path = r.take(len)?;
            if last.is_some_and(|last| last >= path) {
                return None;
            }
            last = Some(path);
            r.take(STAT_BYTES)?;
            let len = r.usize()?;
            r.take(len)?;
            starts.insert_unique(hasher.hash_one(path), start, |&s| {
                hasher.hash_one(path_at(body, s))
            });
        }
        r.is_done().then_some(StatFile {
            bytes,
            payload,
            starts,
            hasher,
        })
    }

    /// How many entries the file holds.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn body(&self) -> &[u8] {
        &self.bytes[self.payload.clone()]
    }
}

/// The path of the entry at `start` of `body` (checked whole by [`StatFile::index`]).
fn path_at(body: &[u8], start: u32) -> &[u8] {
    let mut r = Reader::new(body.get(start as usize..).unwrap_or_default());
    r.usize().and_then(|len| r.take(len)).unwrap_or_default()
}

impl StatEntries for StatFile {
    fn entry(&self, path: &str) -> Option<StatEntry> {
        let body = self.body();
        let path = path.as_bytes();
        let &start = self
            .starts
            .find(self.hasher.hash_one(path), |&s| path_at(body, s) == path)?;
        let mut r = Reader::new(&body[start as usize..]);
        // The path: the bytes just compared equal to `path`'s.
        let len = r.usize()?;
        r.take(len)?;
        read_entry(&mut r)
    }
}

/// What follows an entry's path: its metadata, the time it was recorded, its digest.
fn read_entry(r: &mut Reader<'_>) -> Option<StatEntry> {
    Some(StatEntry {
        size: r.u64()?,
        mtime_ns: r.i128()?,
        ctime_ns: r.i128()?,
        inode: r.u64()?,
        mode: r.u32()?,
        recorded_at_ns: r.i128()?,
        digest: r.string()?,
    })
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

/// Every entry of a payload.
fn decode(payload: &[u8]) -> Option<StatMap> {
    let mut r = Reader::new(payload);
    let n = r.count(FIXED_BYTES)?;
    let mut out = StatMap::with_capacity_and_hasher(n, Default::default());
    for _ in 0..n {
        let path = r.string()?;
        out.insert(path, read_entry(&mut r)?);
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

    fn map(paths: &[&str]) -> StatMap {
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), entry(&format!("b3v1:{i}"))))
            .collect()
    }

    #[test]
    fn entries_round_trip_through_the_encoding() {
        let map: StatMap = [
            ("a".to_string(), entry("b3v1:aa")),
            ("b/é".into(), entry("")),
        ]
        .into_iter()
        .collect();
        let bytes = encode(&map);
        let payload = cachefile::open(&bytes, MAGIC, &key()).expect("own encoding");
        assert_eq!(decode(payload), Some(map.clone()));
        let file = StatFile::index(bytes.clone()).expect("own encoding");
        for (path, entry) in &map {
            assert_eq!(file.entry(path).as_ref(), Some(entry));
        }
        assert_eq!(
            encode(&map),
            encode(&map.clone()),
            "same entries, same bytes"
        );
    }

    /// Every path is found in place, with its own entry, and nothing else is.
    #[test]
    fn a_path_is_looked_up_in_the_file_bytes() {
        let paths = [
            "", "a", "a-b", "a.c", "a/x", "a/y/z", "b", "\u{e9}", "zz/1", "zz/10",
        ];
        let entries = map(&paths);
        let file = StatFile::index(encode(&entries)).expect("own encoding");
        for path in paths {
            assert_eq!(file.entry(path).as_ref(), entries.get(path), "{path:?}");
        }
        for missing in ["0", "a/", "a/y", "zz", "zz/2", "\u{e9}\u{e9}"] {
            assert_eq!(file.entry(missing), None, "{missing:?}");
        }
        assert_eq!(StatFile::default().entry("a"), None);
    }

    /// A file whose checksum holds but whose paths are not in order (never written so)
    /// reads as no cache rather than as one the search would miss entries in.
    #[test]
    fn entries_out_of_order_read_as_nothing() {
        let mut out = cachefile::begin(MAGIC, &key(), 0);
        put_u64(&mut out, 2);
        for path in ["b", "a"] {
            put_str(&mut out, path);
            out.extend_from_slice(&[0; STAT_BYTES]);
            put_str(&mut out, "b3v1:x");
        }
        assert!(StatFile::index(cachefile::finish(out)).is_none());
    }

    #[test]
    fn a_damaged_or_cut_file_reads_as_nothing() {
        let map: StatMap = [("a".to_string(), entry("b3v1:aa"))].into_iter().collect();
        let bytes = encode(&map);
        for at in [0, 9, 50, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(StatFile::index(bad).is_none(), "flipped byte {at}");
        }
        assert!(StatFile::index(bytes[..bytes.len() - 1].to_vec()).is_none());
        assert!(StatFile::index(Vec::new()).is_none());
    }
}
