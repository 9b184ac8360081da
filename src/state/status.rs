//! The status words the state stores as text: a node run's, a run's and an image
//! version's release status.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// The outcome of one stage node in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    Abandoned,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Running => "running",
            NodeStatus::Succeeded => "succeeded",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Cancelled => "cancelled",
            NodeStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<NodeStatus> {
        Some(match s {
            "running" => NodeStatus::Running,
            "succeeded" => NodeStatus::Succeeded,
            "failed" => NodeStatus::Failed,
            "skipped" => NodeStatus::Skipped,
            "cancelled" => NodeStatus::Cancelled,
            "abandoned" => NodeStatus::Abandoned,
            _ => return None,
        })
    }
}

/// The outcome of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Abandoned,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "abandoned" => RunStatus::Abandoned,
            _ => return None,
        })
    }
}

/// An image version's `Release_Status` tag, spelled as the tag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReleaseStatus {
    Candidate,
    Ready,
    Failed,
    /// Pulled out of use by `imgraph revoke` (itself, or the version it was built from):
    /// never an origin, never delivered.
    Revoked,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Candidate => "Candidate",
            ReleaseStatus::Ready => "Ready",
            ReleaseStatus::Failed => "Failed",
            ReleaseStatus::Revoked => "Revoked",
        }
    }

    pub fn parse(s: &str) -> Option<ReleaseStatus> {
        Some(match s {
            "Candidate" => ReleaseStatus::Candidate,
            "Ready" => ReleaseStatus::Ready,
            "Failed" => ReleaseStatus::Failed,
            "Revoked" => ReleaseStatus::Revoked,
            _ => return None,
        })
    }
}

/// An unknown status word read back from the file.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} status `{value}`")]
struct UnknownStatus {
    kind: &'static str,
    value: String,
}

macro_rules! sql_text_enum {
    ($ty:ty, $kind:literal) => {
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                <$ty>::parse(text).ok_or_else(|| {
                    FromSqlError::Other(Box::new(UnknownStatus {
                        kind: $kind,
                        value: text.to_owned(),
                    }))
                })
            }
        }
    };
}
sql_text_enum!(NodeStatus, "node");
sql_text_enum!(RunStatus, "run");
sql_text_enum!(ReleaseStatus, "release");
