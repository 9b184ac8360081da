//! What a plan says about each node: its [`Action`] and the [`Reason`]s for it, as data.
//! One renderer (`report::plan`) turns each reason into a sentence; `plan --json` prints
//! them as they are.

use serde::{Deserialize, Serialize};

use crate::config::model::Trigger;
use crate::graph::NodeId;
use crate::hash::Via;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Run,
    Deferred,
    UpToDate,
    /// A `build:` node whose image is up to date but whose tags changed: the current
    /// version's tags are updated in place (AMI tags, the local registry), nothing is
    /// rebuilt and nothing downstream runs.
    UpdateTags,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Deferred => "deferred",
            Action::UpToDate => "up-to-date",
            Action::UpdateTags => "update-tags",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Added,
    Removed,
    /// The content (or link target, probe output, variable value) changed; its mode may
    /// have changed too (see the reason's `mode`).
    Modified,
    /// Only the permission bits changed.
    Mode,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
            Change::Mode => "mode",
        }
    }
}

/// Permission bits before and after, as four octal digits (`"0644"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChange {
    pub old: String,
    pub new: String,
}

/// Why a node runs (or waits). One renderer turns each into a sentence; `plan --json`
/// prints them as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// Never built (or never succeeded) before.
    New,
    /// An input changed (its `trigger` is set). With trigger `rollup` on a deferred node,
    /// a pending change.
    InputChanged(InputChange),
    /// The node's canonical config stanza changed; `fields` names the parts.
    ConfigChanged { fields: Vec<String> },
    /// The origin image resolved to another id.
    SourceChanged {
        source: String,
        old: String,
        new: String,
    },
    /// A node this one needs runs or now yields a different result.
    UpstreamChanged { node: NodeId },
    /// The last build is older than the image's `max-age`.
    MaxAge { built_at_ms: i64, max_age_secs: u64 },
    /// A rollup input changed and this is a roll-up run (no `trigger`: it is `rollup`).
    Rollup(InputChange),
    /// The last run with this very key failed.
    PreviousFailure { error: Option<String> },
    /// The recorded artifact no longer exists.
    ArtifactMissing { artifact: String },
    /// `--force` named this image.
    Forced,
    /// The image's tags differ from those its current version carries (tag keys; values
    /// are in the config). `unknown` when the version's tags were never recorded.
    TagsChanged {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unknown: bool,
    },
    /// A revoked version (`imgraph revoke`): a build whose current version it is (rolled
    /// back to `back_to`, the image's newest good version, when it was revoked itself and
    /// has one; else rebuilt), or a delivery whose environment holds it.
    Revoked {
        image: String,
        version: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        back_to: Option<String>,
    },
    /// A delivery: the image's current version is not the one this environment last got
    /// (`previous`, when known) — e.g. an apply that stopped after publish.
    NewVersion {
        image: String,
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
    },
}

impl Reason {
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::InputChanged(_) => "input-changed",
            Reason::ConfigChanged { .. } => "config-changed",
            Reason::SourceChanged { .. } => "source-changed",
            Reason::UpstreamChanged { .. } => "upstream-changed",
            Reason::MaxAge { .. } => "max-age",
            Reason::Rollup(_) => "rollup",
            Reason::PreviousFailure { .. } => "previous-failure",
            Reason::ArtifactMissing { .. } => "artifact-missing",
            Reason::Forced => "forced",
            Reason::NewVersion { .. } => "new-version",
            Reason::TagsChanged { .. } => "tags-changed",
            Reason::Revoked { .. } => "revoked",
        }
    }
}

/// One input's change: what [`Reason::InputChanged`] and [`Reason::Rollup`] say, in
/// this field order in `plan --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputChange {
    pub path: String,
    pub change: Change,
    /// The input's trigger, in an `input-changed` reason; a `rollup` reason has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// How the path is an input, when not declared (`run`: named in a command).
    #[serde(default, skip_serializing_if = "Via::is_input")]
    pub via: Via,
    /// Old and new permission bits, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeChange>,
    /// For a package list: which packages came and went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<PackageChange>,
}

/// The packages a package list gained and lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// A pending rollup change picked up by a roll-up run: reported as `rollup`, not as a
/// changed input.
pub(super) fn as_rollup(r: Reason) -> Reason {
    match r {
        Reason::InputChanged(input) => Reason::Rollup(InputChange {
            trigger: None,
            ..input
        }),
        other => other,
    }
}
