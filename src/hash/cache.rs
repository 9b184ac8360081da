//! The stat cache: skip re-reading files whose metadata has not changed.
//!
//! The caller (who owns the SQL) loads the cached entries from the state file into a
//! [`StatCache`], hashing reuses a digest when a file's size, mtime, ctime, inode and mode
//! all match the cached entry, and the caller stores [`StatCache::take_updates`] afterwards.
//! ctime is compared too because restoring an mtime (`touch -d`, `tar -x`) still moves the
//! ctime, so "same size, same mtime, new content" cannot slip through.
//!
//! Racy entries: an entry recorded within [`RACY_WINDOW_NS`] of the file's mtime is not
//! trusted (git's "racy clean" problem). A file written in the same timestamp tick as it
//! was hashed may change again without changing its mtime on file systems with coarse
//! timestamps. Such files are re-hashed on every run until they have been quiet for the
//! window; `recorded_at_ns` is the clock at load time, before any file is read, which errs
//! towards re-hashing.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// An entry whose file was modified this close to (or after) the moment it was recorded is
/// re-hashed instead of trusted.
pub const RACY_WINDOW_NS: i128 = 2_000_000_000;

/// What the state file remembers about one project file (keyed by its project-relative path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedStat {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub inode: u64,
    /// Full `st_mode` (file type and permission bits).
    pub mode: u32,
    /// The file's `b3v1:` digest.
    pub digest: String,
    /// Wall clock (ns since the Unix epoch) when the digest was taken.
    pub recorded_at_ns: i128,
}

/// Hits (digest reused) and misses (file read and hashed) of one hashing session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// Project-relative path -> cached entry. Hashed with foldhash: a plan looks up every input
/// path of the project here (20,000 lookups for a 20,000-file tree), and SipHash was 7 % of
/// a no-change plan's instructions. The keys are the project's own paths, not input an
/// attacker picks to collide.
pub type StatMap = HashMap<String, CachedStat, foldhash::fast::RandomState>;

/// Where a [`StatCache`] finds the entry of a path: a map, or the state's stat cache file
/// read as it is (`state/stat_cache.rs`), which a plan looks up without building a map.
pub trait StatEntries: std::fmt::Debug + Send + Sync {
    fn entry(&self, path: &str) -> Option<CachedStat>;
}

impl StatEntries for StatMap {
    fn entry(&self, path: &str) -> Option<CachedStat> {
        self.get(path).cloned()
    }
}

/// Cached digests from the state file plus the entries this hashing produced.
#[derive(Debug)]
pub struct StatCache {
    entries: Box<dyn StatEntries>,
    now_ns: i128,
    updates: Mutex<Vec<(String, CachedStat)>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The metadata compared against a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub inode: u64,
    pub mode: u32,
}

impl FileStat {
    pub(crate) fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub(crate) fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub(crate) fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }

    pub(crate) fn of(md: &Metadata) -> Self {
        FileStat {
            size: md.size(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
            inode: md.ino(),
            mode: md.mode(),
        }
    }
}

impl StatCache {
    /// A cache over the entries loaded from the state file; the clock is read now.
    pub fn new(entries: impl StatEntries + 'static) -> Self {
        StatCache {
            entries: Box::new(entries),
            now_ns: now_ns(),
            updates: Mutex::new(Vec::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// No cached entries: every file is read.
    pub fn empty() -> Self {
        Self::new(StatMap::default())
    }

    /// The entries hashed since the last call, sorted by path, for the caller to store.
    pub fn take_updates(&self) -> Vec<(String, CachedStat)> {
        let mut updates = std::mem::take(&mut *lock(&self.updates));
        updates.sort_by(|a, b| a.0.cmp(&b.0));
        updates
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The cached digest of `path` if `stat` matches the entry and the entry is not racy.
    pub(crate) fn lookup(&self, path: &str, stat: &FileStat) -> Option<String> {
        let entry = self.entries.entry(path)?;
        let same = entry.size == stat.size
            && entry.mtime_ns == stat.mtime_ns
            && entry.ctime_ns == stat.ctime_ns
            && entry.inode == stat.inode
            && entry.mode == stat.mode;
        if same && !racy(entry.mtime_ns, entry.recorded_at_ns) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            Some(entry.digest)
        } else {
            None
        }
    }

    /// Records a freshly computed digest (a miss). A file modified within the racy window
    /// of now is not recorded: its entry would be racy at every lookup (its times never
    /// change), so never trusted, only written; and a plan that read only such files
    /// leaves the cache file as it is instead of writing it whole again (a plan right
    /// after an edit did, 3.5 MB for a 20,000-file tree).
    pub(crate) fn record(&self, path: &str, stat: FileStat, digest: &str) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        if racy(stat.mtime_ns, self.now_ns) {
            return;
        }
        let entry = CachedStat {
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            ctime_ns: stat.ctime_ns,
            inode: stat.inode,
            mode: stat.mode,
            digest: digest.to_owned(),
            recorded_at_ns: self.now_ns,
        };
        lock(&self.updates).push((path.to_owned(), entry));
    }
}

/// Whether a digest taken at `recorded_at_ns` of a file modified at `mtime_ns` may miss a
/// later write in the same timestamp tick (see the module docs).
fn racy(mtime_ns: i128, recorded_at_ns: i128) -> bool {
    mtime_ns >= recorded_at_ns - RACY_WINDOW_NS
}

fn now_ns() -> i128 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// A poisoned lock only means another hashing thread panicked; the data (a list or a map
/// of finished digests) is still consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
