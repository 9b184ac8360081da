//! The apply lease (invariant 5: two applies on one state never interleave).
//!
//! A single row names the holder's pid, process identity and a free-form holder label.
//! It is taken in a `BEGIN IMMEDIATE` transaction, so two processes racing for it are
//! serialised by SQLite's write lock. A lease whose process is gone (crash, kill -9) is
//! taken over; there is no expiry time, because a long apply must not lose its lease.

use rusqlite::{params, OptionalExtension};

use super::process::{is_alive, own_identity};
use super::{now_ms, LeaseOutcome, State, StateError};

impl State {
    /// Takes the lease for `holder`, or reports who holds it. Taking it again with the
    /// same holder from the same process succeeds; a different holder, even in this
    /// process, gets `HeldBy`.
    pub fn acquire_lease(&self, holder: &str) -> Result<LeaseOutcome, StateError> {
        let context = "take the apply lease";
        let tx = self.write_tx(context)?;
        let current: Option<(u32, Option<String>, String, i64)> = tx
            .query_row(
                "SELECT pid, proc_start, holder, since FROM lease WHERE id = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(|e| self.sql_err(e, context))?;
        let own_pid = std::process::id();
        if let Some((pid, identity, current_holder, since)) = current {
            let ours = pid == own_pid && identity.as_deref() == own_identity();
            if ours && current_holder == holder {
                return Ok(LeaseOutcome::Acquired);
            }
            if is_alive(pid, identity.as_deref()) {
                return Ok(LeaseOutcome::HeldBy {
                    pid,
                    holder: current_holder,
                    since,
                });
            }
            tracing::warn!(pid, holder = %current_holder, "taking over the apply lease of a process that is gone");
        }
        tx.execute(
            "INSERT OR REPLACE INTO lease (id, pid, proc_start, holder, since)
             VALUES (1, ?1, ?2, ?3, ?4)",
            params![own_pid, own_identity(), holder, now_ms()],
        )
        .map_err(|e| self.sql_err(e, context))?;
        tx.commit().map_err(|e| self.sql_err(e, context))?;
        Ok(LeaseOutcome::Acquired)
    }

    /// Gives the lease up if this process holds it; otherwise does nothing.
    pub fn release_lease(&self) -> Result<(), StateError> {
        self.conn
            .execute(
                "DELETE FROM lease WHERE id = 1 AND pid = ?1 AND proc_start IS ?2",
                params![std::process::id(), own_identity()],
            )
            .map_err(|e| self.sql_err(e, "release the apply lease"))?;
        Ok(())
    }
}
