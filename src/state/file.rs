//! The state file itself: opening it (created, read-only or in memory), its connection
//! settings, the schema migrations, and compacting it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::{State, StateError, MIGRATIONS};

/// How long a call waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl State {
    /// Opens (creating it and its parent folders if needed) the state file and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<State, StateError> {
        Self::open_with(path, MIGRATIONS)
    }

    /// Opens the state file for a command that only reads it (`plan`, `images`,
    /// `history`, `lock status`), and never creates it: a missing file reads as an empty
    /// state held in memory. A file that cannot be written (a read-only folder or mount)
    /// is opened read-only: without WAL set-up and without migrations, as an immutable
    /// file if SQLite cannot even create its shared-memory index there.
    /// [`State::is_read_only`] then tells callers to skip what they would only cache.
    pub fn open_for_reading(path: &Path) -> Result<State, StateError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Self::in_memory(path),
            _ => {}
        }
        let writable = Self::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE).and_then(|mut s| {
            s.configure()?;
            s.migrate(MIGRATIONS)?;
            // SQLite opens a write-protected file read-only without saying so.
            s.read_only = s
                .conn
                .is_readonly(rusqlite::MAIN_DB)
                .map_err(|e| s.sql_err(e, "check whether the state file is writable"))?;
            Ok(s)
        });
        let first = match writable {
            Ok(state) => return Ok(state),
            // A newer schema is refused whatever the permissions.
            Err(e @ StateError::NewerSchema { .. }) => return Err(e),
            Err(e) => e,
        };
        for immutable in [false, true] {
            let opened = Self::connect_read_only(path, immutable).and_then(|s| {
                s.check_readable()?;
                Ok(s)
            });
            match opened {
                Ok(state) => return Ok(state),
                Err(e @ StateError::NewerSchema { .. }) => return Err(e),
                Err(_) => {}
            }
        }
        Err(first)
    }

    /// An empty state in memory, named after `path` in messages.
    pub(super) fn in_memory(path: &Path) -> Result<State, StateError> {
        let conn = Connection::open_in_memory().map_err(|source| StateError::Sqlite {
            path: path.to_path_buf(),
            context: "open an empty state in memory".into(),
            source,
        })?;
        let state = State {
            conn,
            path: path.to_path_buf(),
            read_only: false,
            journal: None,
            log_syncs: Default::default(),
        };
        state.migrate(MIGRATIONS)?;
        Ok(state)
    }

    pub(super) fn connect(path: &Path, mode: OpenFlags) -> Result<State, StateError> {
        let flags = mode | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|source| StateError::Sqlite {
                path: path.to_path_buf(),
                context: "open the state file".into(),
                source,
            })?;
        Ok(State {
            conn,
            path: path.to_path_buf(),
            read_only: !mode.contains(OpenFlags::SQLITE_OPEN_READ_WRITE),
            journal: None,
            log_syncs: Default::default(),
        })
    }

    pub(super) fn connect_read_only(path: &Path, immutable: bool) -> Result<State, StateError> {
        if !immutable {
            return Self::connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY);
        }
        // `immutable=1`: SQLite neither locks nor looks for a WAL, which is what a file on
        // a read-only mount allows. The URI needs an absolute, percent-encoded path.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut uri = String::from("file:");
        for b in absolute.as_os_str().as_encoded_bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                    uri.push(char::from(*b))
                }
                _ => uri.push_str(&format!("%{b:02X}")),
            }
        }
        uri.push_str("?immutable=1");
        let mut state = Self::connect(Path::new(&uri), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        state.path = path.to_path_buf();
        Ok(state)
    }

    /// For a read-only connection: refuses a newer schema and proves the file is readable.
    pub(super) fn check_readable(&self) -> Result<(), StateError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.sql_err(e, "set the busy timeout"))?;
        let known = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
        let current = self.schema_version()?;
        if current > known {
            return Err(self.newer_schema(current, known));
        }
        Ok(())
    }

    pub(super) fn open_with(path: &Path, migrations: &[&str]) -> Result<State, StateError> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
                path: path.clone(),
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let state = Self::connect(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        state.configure()?;
        state.migrate(migrations)?;
        Ok(state)
    }

    pub(super) fn configure(&self) -> Result<(), StateError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.sql_err(e, "set the busy timeout"))?;
        let mode: String = self
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| self.sql_err(e, "switch to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Some file systems (network mounts) cannot share the WAL index; SQLite then
            // keeps its rollback journal, which is still consistent, only less concurrent.
            tracing::warn!(path = %self.path.display(), mode, "state file is not in WAL mode");
        }
        self.conn
            .pragma_update(None, "foreign_keys", true)
            .map_err(|e| self.sql_err(e, "enable foreign keys"))?;
        if crate::crash::enabled() {
            // Every commit is a crash point, taken before SQLite makes it durable.
            self.conn.commit_hook(Some(|| {
                crate::crash::point("state: commit");
                false
            }));
        }
        self.set_synchronous("NORMAL")?;
        // The write-ahead log outlives the connection: closing the last one neither
        // folds the log into the file nor deletes it, which cost four fsyncs per command
        // (the log synced and folded in, the file synced; the next command creating the
        // log again and syncing it and its folder). The log is as safe as the file
        // (SQLite reads both, and recovers the log after a crash); it is folded in when
        // the lease of a run that changed the history is given back, and by SQLite
        // itself once it grows past 1,000 pages.
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(|e| self.sql_err(e, "keep the write-ahead log on close"))?;
        Ok(())
    }

    /// Folds the write-ahead log into the state file and empties it, so the file alone
    /// holds every commit (for a copy of it, and for a reader that cannot use the log:
    /// the read-only `immutable` open). Never waits: while another process reads, the
    /// log stays as it is (still consistent) and is folded in another time.
    pub(crate) fn fold_log(&self) -> Result<(), StateError> {
        self.conn
            .busy_timeout(Duration::ZERO)
            .map_err(|e| self.sql_err(e, "set the busy timeout"))?;
        let folded = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.sql_err(e, "set the busy timeout"))?;
        folded
            .map(|_busy| ())
            .map_err(|e| self.sql_err(e, "fold the write-ahead log into the state file"))
    }

    pub(super) fn migrate(&self, migrations: &[&str]) -> Result<(), StateError> {
        let known = u32::try_from(migrations.len()).unwrap_or(u32::MAX);
        let current = self.schema_version()?;
        if current > known {
            return Err(self.newer_schema(current, known));
        }
        if current == known {
            return Ok(());
        }
        // Foreign keys are off while migrations run (a migration may rebuild a table that
        // others reference: SQLite's table-rebuild procedure) and checked before commit.
        // The pragma is a no-op inside a transaction, hence around it.
        let enforced: bool = self
            .conn
            .pragma_query_value(None, "foreign_keys", |row| row.get(0))
            .map_err(|e| self.sql_err(e, "read the foreign keys setting"))?;
        self.conn
            .pragma_update(None, "foreign_keys", false)
            .map_err(|e| self.sql_err(e, "turn foreign keys off for the migration"))?;
        let migrated = self.migrate_in_tx(migrations, known);
        self.conn
            .pragma_update(None, "foreign_keys", enforced)
            .map_err(|e| self.sql_err(e, "turn foreign keys back on"))?;
        migrated
    }

    pub(super) fn migrate_in_tx(&self, migrations: &[&str], known: u32) -> Result<(), StateError> {
        let tx = self.write_tx("migrate the schema")?;
        // Another process may have migrated between the read above and taking the lock.
        let current = self.schema_version()?;
        if current > known {
            return Err(self.newer_schema(current, known));
        }
        for (index, sql) in migrations.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql)
                .map_err(|e| self.sql_err(e, format!("apply schema migration {}", index + 1)))?;
        }
        let dangling: i64 = tx
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })
            .map_err(|e| self.sql_err(e, "check foreign keys after the migration"))?;
        if dangling > 0 {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "{dangling} rows refer to rows that do not exist after the schema migration"
                ),
            });
        }
        tx.pragma_update(None, "user_version", known)
            .map_err(|e| self.sql_err(e, "record the schema version"))?;
        tx.commit()
            .map_err(|e| self.sql_err(e, "commit the schema migration"))
    }

    pub(super) fn newer_schema(&self, found: u32, known: u32) -> StateError {
        StateError::NewerSchema {
            path: self.path.clone(),
            found,
            known,
        }
    }

    /// The schema version recorded in the file (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StateError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| self.sql_err(e, "read the schema version"))?;
        u32::try_from(version).map_err(|_| StateError::Corrupt {
            path: self.path.clone(),
            detail: format!("schema version {version} is out of range"),
        })
    }

    /// Gives the space of deleted and shrunk rows back to the file system: `VACUUM`, then
    /// a checkpoint that empties the write-ahead log. Returns the file's size in bytes
    /// before and after (the log included).
    pub fn compact(&self) -> Result<(u64, u64), StateError> {
        let before = self.size_on_disk();
        self.conn
            .execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(|e| self.sql_err(e, "compact the state file"))?;
        Ok((before, self.size_on_disk()))
    }

    /// The state file's size plus its write-ahead log's, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        let wal = {
            let mut p = self.path.clone().into_os_string();
            p.push("-wal");
            PathBuf::from(p)
        };
        [self.path.as_path(), wal.as_path()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}
