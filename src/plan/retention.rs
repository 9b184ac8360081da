//! Retention, decided: which versions `imgraph gc` removes and why each one stays or goes.
//! Pure: `(project, registry, current versions, now) → decisions`.
//!
//! A version stays when an environment holds it, when it is its image's newest Ready
//! version or current version (the build's last success), or when a current version of
//! another image was built from it; otherwise its image's `retain` decides: the newest
//! `keep` versions and those built within `keep-days` days stay, the others go. Images
//! without a `retain` (their own or the project's) keep everything.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::config::model::Project;
use crate::state::{compare_versions, ImageRecord, ReleaseStatus};

const DAY_MS: i64 = 86_400_000;

/// Why a version stays or goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Retention {
    /// Environments hold it now.
    Held { environments: Vec<String> },
    /// The image's newest Ready version.
    NewestReady,
    /// The image's current version (its build's last success).
    Current,
    /// The current versions of other images were built from it.
    Origin { of: Vec<String> },
    /// Among the newest `keep`.
    WithinKeep { keep: u32 },
    /// Built within `keep-days` days.
    WithinKeepDays { keep_days: u32 },
    /// Beyond both: removed.
    Beyond {
        #[serde(skip_serializing_if = "Option::is_none")]
        keep: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        keep_days: Option<u32>,
    },
}

impl Retention {
    pub fn removes(&self) -> bool {
        matches!(self, Retention::Beyond { .. })
    }

    /// One line for people.
    pub fn text(&self) -> String {
        match self {
            Retention::Held { environments } => format!("held by {}", environments.join(", ")),
            Retention::NewestReady => "newest Ready version".into(),
            Retention::Current => "current version".into(),
            Retention::Origin { of } => format!("origin of current {}", of.join(", ")),
            Retention::WithinKeep { keep } => format!("within keep {keep}"),
            Retention::WithinKeepDays { keep_days } => format!("within keep-days {keep_days}"),
            Retention::Beyond { keep, keep_days } => {
                let mut parts = Vec::new();
                if let Some(k) = keep {
                    parts.push(format!("keep {k}"));
                }
                if let Some(d) = keep_days {
                    parts.push(format!("keep-days {d}"));
                }
                format!("beyond {}", parts.join(" and "))
            }
        }
    }
}

/// One version's decision.
#[derive(Debug, Clone, Serialize)]
pub struct VersionDecision {
    pub image: String,
    pub version: String,
    pub id: String,
    pub status: String,
    pub built_at_ms: i64,
    pub retention: Retention,
}

/// What `imgraph gc` did (or, with `--dry-run`, would do) with one version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GcVersion {
    #[serde(flatten)]
    pub decision: VersionDecision,
    /// What was removed: local artifact ids, AMI ids and snapshot ids (none in a dry run,
    /// nor when another kept version has the same bytes).
    pub removed: Vec<String>,
}

/// Decides every version of every image that has a `retain`. `records` are the live
/// registry rows ([`crate::state::State::images`]); `current` maps an image to its
/// current version.
pub fn decide(
    project: &Project,
    records: &[ImageRecord],
    current: &HashMap<String, String>,
    now_ms: i64,
) -> Vec<VersionDecision> {
    // `IMAGE@VERSION` → the current versions built from it.
    let mut origin_of: HashMap<&str, Vec<String>> = HashMap::new();
    for r in records {
        if current.get(&r.version.image) == Some(&r.version.version) {
            if let Some(origin) = r.version.origin.as_deref() {
                origin_of
                    .entry(origin)
                    .or_default()
                    .push(format!("{} {}", r.version.image, r.version.version));
            }
        }
    }
    let mut by_image: BTreeMap<&str, Vec<&ImageRecord>> = BTreeMap::new();
    for r in records {
        by_image
            .entry(r.version.image.as_str())
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for (name, mut versions) in by_image {
        let Some(retain) = project.image(name).and_then(|i| project.retain_of(i)) else {
            continue;
        };
        versions.sort_by(|a, b| compare_versions(&b.version.version, &a.version.version));
        let newest_ready = versions
            .iter()
            .find(|r| r.version.status == ReleaseStatus::Ready)
            .map(|r| r.version.version.clone());
        for (rank, r) in versions.iter().enumerate() {
            let id = format!("{}@{}", r.version.image, r.version.version);
            let retention = if !r.holding.is_empty() {
                Retention::Held {
                    environments: r.holding.clone(),
                }
            } else if newest_ready.as_deref() == Some(r.version.version.as_str()) {
                Retention::NewestReady
            } else if current.get(&r.version.image) == Some(&r.version.version) {
                Retention::Current
            } else if let Some(of) = origin_of.get(id.as_str()) {
                Retention::Origin { of: of.clone() }
            } else if let Some(keep) = retain.keep.filter(|k| (rank as u64) < u64::from(*k)) {
                Retention::WithinKeep { keep }
            } else if let Some(days) = retain
                .keep_days
                .filter(|d| now_ms.saturating_sub(r.version.built_at) < i64::from(*d) * DAY_MS)
            {
                Retention::WithinKeepDays { keep_days: days }
            } else {
                Retention::Beyond {
                    keep: retain.keep,
                    keep_days: retain.keep_days,
                }
            };
            out.push(VersionDecision {
                image: r.version.image.clone(),
                version: r.version.version.clone(),
                id: r.version.artifact_id.clone(),
                status: r.version.status.as_str().to_string(),
                built_at_ms: r.version.built_at,
                retention,
            });
        }
    }
    out
}
