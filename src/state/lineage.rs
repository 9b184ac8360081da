//! The state file's lineage and serial (schema 4): which state file this is, and how many
//! writes to what plans are decided from it has seen. Triggers in the schema bump the
//! serial, so no caller can forget to.

use super::{State, StateError};

/// Which state file, and at which write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// Random, fixed when the file was created (or first migrated to schema 4).
    pub lineage: String,
    /// Grows with every write to runs, node runs, images and deliveries.
    pub serial: i64,
}

impl State {
    pub fn lineage(&self) -> Result<Lineage, StateError> {
        self.conn
            .query_row(
                "SELECT lineage, serial FROM lineage WHERE id = 1",
                [],
                |row| {
                    Ok(Lineage {
                        lineage: row.get(0)?,
                        serial: row.get(1)?,
                    })
                },
            )
            .map_err(|e| self.sql_err(e, "read the lineage and serial"))
    }
}
