//! The stat cache: project-relative path -> what the file looked like when it was hashed.
//!
//! The hasher decides whether a cached digest still holds; this module only stores the
//! entries. Nanosecond times are stored as decimal text because `i128` does not fit an
//! SQLite integer; sizes and inodes are stored as the `i64` with the same bits.

use rusqlite::params;

use super::{StatEntry, State, StateError};
use crate::hash::StatMap;

impl State {
    pub fn load_stat_cache(&self) -> Result<StatMap, StateError> {
        let context = "load the stat cache";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT path, size, mtime_ns, ctime_ns, inode, mode, digest, recorded_at_ns
                 FROM stat_cache",
            )
            .map_err(|e| self.sql_err(e, context))?;
        let bad_time = |path: &str, text: &str| StateError::Corrupt {
            path: self.path.clone(),
            detail: format!("stat cache entry `{path}` has a bad time `{text}`"),
        };
        // Read column by column without an owned string per time (20,000 rows on every
        // plan of a large tree: the allocations were most of the cost).
        let mut rows = stmt.query([]).map_err(|e| self.sql_err(e, context))?;
        let mut out = StatMap::default();
        while let Some(row) = rows.next().map_err(|e| self.sql_err(e, context))? {
            let path: String = row.get(0).map_err(|e| self.sql_err(e, context))?;
            let time = |i: usize| -> Result<i128, StateError> {
                let value = row.get_ref(i).map_err(|e| self.sql_err(e, context))?;
                let text = value
                    .as_str()
                    .map_err(|e| self.sql_err(rusqlite::Error::from(e), context))?;
                text.parse::<i128>().map_err(|_| bad_time(&path, text))
            };
            let entry = StatEntry {
                size: row.get::<_, i64>(1).map_err(|e| self.sql_err(e, context))? as u64,
                mtime_ns: time(2)?,
                ctime_ns: time(3)?,
                inode: row.get::<_, i64>(4).map_err(|e| self.sql_err(e, context))? as u64,
                mode: row.get(5).map_err(|e| self.sql_err(e, context))?,
                digest: row.get(6).map_err(|e| self.sql_err(e, context))?,
                recorded_at_ns: time(7)?,
            };
            out.insert(path, entry);
        }
        Ok(out)
    }

    /// Inserts or replaces `entries`, in one transaction. Entries not listed are kept.
    pub fn store_stat_cache(&self, entries: &[(String, StatEntry)]) -> Result<(), StateError> {
        let context = "store the stat cache";
        let tx = self.write_tx(context)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO stat_cache
                         (path, size, mtime_ns, ctime_ns, inode, mode, digest, recorded_at_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (path) DO UPDATE SET
                         size = excluded.size, mtime_ns = excluded.mtime_ns,
                         ctime_ns = excluded.ctime_ns, inode = excluded.inode,
                         mode = excluded.mode, digest = excluded.digest,
                         recorded_at_ns = excluded.recorded_at_ns",
                )
                .map_err(|e| self.sql_err(e, context))?;
            for (path, entry) in entries {
                stmt.execute(params![
                    path,
                    entry.size as i64,
                    entry.mtime_ns.to_string(),
                    entry.ctime_ns.to_string(),
                    entry.inode as i64,
                    entry.mode,
                    entry.digest,
                    entry.recorded_at_ns.to_string(),
                ])
                .map_err(|e| self.sql_err(e, format!("{context} entry `{path}`")))?;
            }
        }
        tx.commit().map_err(|e| self.sql_err(e, context))
    }
}
