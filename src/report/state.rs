//! Renderings of what the state records: `imgraph images` and `imgraph history`.

use std::fmt::Write as _;

use serde_json::json;

use super::{short_id, timestamp, Palette};
use crate::state::{
    ImageRecord, Lease, Liveness, NodeRecord, NodeStatus, ReleaseStatus, RunRecord, RunStatus,
};

pub const FORMAT_VERSION: u32 = 1;

fn status_str(s: ReleaseStatus) -> &'static str {
    s.as_str()
}

pub fn images_json(records: &[ImageRecord]) -> String {
    let images: Vec<_> = records
        .iter()
        .map(|r| {
            json!({
                "image": r.version.image, "version": r.version.version, "id": r.version.artifact_id,
                "provider": r.version.provider, "key": r.version.key, "status": status_str(r.version.status),
                "built_at": timestamp(r.version.built_at), "built_at_ms": r.version.built_at,
                "run_id": r.version.run, "environments": r.environments, "holding": r.holding,
                "origin": r.version.origin, "revoked_reason": r.version.revoked_reason,
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({"format_version": FORMAT_VERSION, "images": images}))
        .unwrap_or_default()
}

/// One row per version; `HELD BY` names the environments whose latest delivery is this
/// version (what they run now). Columns are as wide as their widest value.
pub fn images_text(records: &[ImageRecord], p: Palette) -> String {
    if records.is_empty() {
        return "No images built yet: run `imgraph apply`.\n".into();
    }
    let header = ["IMAGE", "VERSION", "ID", "STATUS", "BUILT", "HELD BY"];
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            [
                r.version.image.clone(),
                r.version.version.clone(),
                short_id(&r.version.artifact_id),
                status_str(r.version.status).to_string(),
                timestamp(r.version.built_at),
                r.holding.join(", "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: [&str; 6], status: &str| -> String {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let shown = if i == 3 { status } else { cell };
            if i + 1 == cells.len() {
                text.push_str(shown);
            } else {
                let fill = widths[i].saturating_sub(cell.chars().count());
                let _ = write!(text, "{shown}{}  ", " ".repeat(fill));
            }
        }
        text.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header, header[3]));
    for (r, row) in records.iter().zip(&rows) {
        let status = match r.version.status {
            ReleaseStatus::Ready => p.green(&row[3]),
            ReleaseStatus::Failed | ReleaseStatus::Revoked => p.red(&row[3]),
            ReleaseStatus::Candidate => p.yellow(&row[3]),
        };
        let cells = [
            row[0].as_str(),
            row[1].as_str(),
            row[2].as_str(),
            row[3].as_str(),
            row[4].as_str(),
            row[5].as_str(),
        ];
        let _ = writeln!(out, "{}", line(cells, &status));
    }
    out
}

pub fn history_json(runs: &[(RunRecord, Vec<NodeRecord>)]) -> String {
    let runs: Vec<_> = runs
        .iter()
        .map(|(r, nodes)| {
            json!({
                "id": r.id, "command": r.command, "status": r.status.as_str(),
                "started_at": timestamp(r.started_at), "started_at_ms": r.started_at,
                "finished_at_ms": r.finished_at, "pid": r.pid,
                "options": serde_json::from_str::<serde_json::Value>(&r.options_json).unwrap_or_default(),
                "nodes": nodes.iter().map(|n| json!({
                    "id": n.node_id, "status": n.status.as_str(), "key": n.key,
                    "started_at_ms": n.started_at, "finished_at_ms": n.finished_at,
                    "error": n.error, "log_path": n.log_path,
                    "outputs": n.outputs_json.as_deref().and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok()),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({"format_version": FORMAT_VERSION, "runs": runs}))
        .unwrap_or_default()
}

pub fn history_text(runs: &[(RunRecord, Vec<NodeRecord>)], p: Palette) -> String {
    if runs.is_empty() {
        return "No runs yet.\n".into();
    }
    let mut out = String::new();
    for (r, nodes) in runs {
        let status = match r.status {
            RunStatus::Succeeded => p.green(r.status.as_str()),
            RunStatus::Failed | RunStatus::Abandoned => p.red(r.status.as_str()),
            _ => p.yellow(r.status.as_str()),
        };
        let _ = writeln!(
            out,
            "{} {}  {}  {status}  {} nodes",
            p.bold("run"),
            r.id,
            timestamp(r.started_at),
            nodes.len()
        );
        for n in nodes {
            let dur = n
                .finished_at
                .map(|f| format!("{:.1}s", (f - n.started_at) as f64 / 1000.0))
                .unwrap_or_else(|| "-".into());
            let st = match n.status {
                NodeStatus::Succeeded => p.green(n.status.as_str()),
                NodeStatus::Failed => p.red(n.status.as_str()),
                _ => p.yellow(n.status.as_str()),
            };
            // An error, or the note of a node recorded without running (early cutoff).
            let note = n
                .outputs_json
                .as_deref()
                .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok())
                .and_then(|o| o.get("note").and_then(|v| v.as_str()).map(str::to_owned));
            let err = n
                .error
                .clone()
                .or(note)
                .map(|e| format!("  {e}"))
                .unwrap_or_default();
            let _ = writeln!(out, "    {:32} {st:10} {dur:>7}{err}", n.node_id);
        }
    }
    out
}

/// "pid 4242 on host ci-3, for 3m 12s since 2026-11-27T03:00:00Z": who holds the state
/// lock, where, and for how long.
pub fn lease_holder(pid: u32, host: Option<&str>, since: i64, now: i64) -> String {
    let age = std::time::Duration::from_secs(u64::try_from((now - since) / 1000).unwrap_or(0));
    let on = host.map(|h| format!(" on host {h}")).unwrap_or_default();
    format!(
        "pid {pid}{on}, for {} since {}",
        humantime::format_duration(age),
        super::timestamp(since)
    )
}

/// What one prune did.
#[derive(Debug, Default, Clone)]
pub struct Pruned {
    /// Node runs whose manifest was cut down.
    pub manifests: usize,
    /// Unreferenced artifacts removed, with their sizes in bytes.
    pub artifacts: Vec<(std::path::PathBuf, u64)>,
    /// The state file's size (with its write-ahead log) before and after, in bytes.
    pub state_bytes: (u64, u64),
}

/// What `imgraph gc` pruned, as text.
pub fn pruned_text(p: &Pruned) -> String {
    let mut s = String::new();
    for (path, size) in &p.artifacts {
        s.push_str(&format!(
            "removed unreferenced artifact {} ({})\n",
            path.display(),
            bytes(*size)
        ));
    }
    let freed: u64 = p.artifacts.iter().map(|(_, n)| n).sum();
    s.push_str(&format!(
        "gc: {} unreferenced artifacts removed ({}); {} old manifests pruned; state file {} -> {}\n",
        p.artifacts.len(),
        bytes(freed),
        p.manifests,
        bytes(p.state_bytes.0),
        bytes(p.state_bytes.1),
    ));
    s
}

/// A size in bytes for people: `812 B`, `3.4 MB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `imgraph lock status` as text.
pub fn lease_text(lease: Option<&Lease>, now: i64) -> String {
    let Some(l) = lease else {
        return "unlocked: nothing holds the state lock\n".into();
    };
    let alive = match l.liveness {
        Liveness::Alive => "the process is running",
        Liveness::Gone => "the process is gone: the next apply takes the lock over",
        Liveness::OtherHost => "it runs on another host, where imgraph cannot check it",
    };
    let mut text = format!(
        "locked: {} holds the state lock ({}); {alive}\n",
        l.holder,
        lease_holder(l.pid, l.host.as_deref(), l.since, now)
    );
    if let Some(beat) = l.heartbeat {
        text.push_str(&format!("  last heartbeat: {} ago\n", age_text(now - beat)));
    }
    if let Some(command) = &l.command {
        text.push_str(&format!("  command: {}\n", super::plan::escape(command)));
    }
    text
}

fn age_text(ms: i64) -> String {
    let age = std::time::Duration::from_secs(u64::try_from(ms / 1000).unwrap_or(0));
    humantime::format_duration(age).to_string()
}

/// `imgraph lock status --json`.
pub fn lease_json(lease: Option<&Lease>, now: i64) -> String {
    let value = match lease {
        None => serde_json::json!({ "locked": false }),
        Some(l) => serde_json::json!({
            "locked": true,
            "holder": l.holder,
            "pid": l.pid,
            "host": l.host,
            "since": super::timestamp(l.since),
            "age_ms": now - l.since,
            "command": l.command,
            "heartbeat": l.heartbeat.map(super::timestamp),
            "heartbeat_age_ms": l.heartbeat.map(|beat| now - beat),
            "liveness": match l.liveness {
                Liveness::Alive => "alive",
                Liveness::Gone => "gone",
                Liveness::OtherHost => "other-host",
            },
        }),
    };
    value.to_string()
}

/// `imgraph gc --json`: the leftovers destroyed and every version's retention decision.
pub fn gc_json(
    leftovers: &[(String, String, String)],
    versions: &[crate::plan::retention::GcVersion],
    dry_run: bool,
) -> String {
    let leftovers: Vec<_> = leftovers
        .iter()
        .map(|(kind, resource, node)| json!({"kind": kind, "resource": resource, "node": node}))
        .collect();
    let versions: Vec<_> = versions
        .iter()
        .map(|v| {
            let mut value = serde_json::to_value(v).unwrap_or_default();
            if let serde_json::Value::Object(map) = &mut value {
                let action = if v.decision.retention.removes() {
                    "remove"
                } else {
                    "keep"
                };
                map.insert("action".into(), action.into());
                map.insert("built_at".into(), timestamp(v.decision.built_at_ms).into());
            }
            value
        })
        .collect();
    serde_json::to_string_pretty(&json!({
        "format_version": FORMAT_VERSION,
        "dry_run": dry_run,
        "leftovers": leftovers,
        "versions": versions,
    }))
    .unwrap_or_default()
}

/// `imgraph gc` as text: one line per version of the images with a `retain`, then a
/// summary.
pub fn gc_text(
    leftovers: &[(String, String, String)],
    versions: &[crate::plan::retention::GcVersion],
    dry_run: bool,
) -> String {
    let mut out = String::new();
    for (kind, resource, node) in leftovers {
        let _ = writeln!(out, "destroyed {kind} {resource} (left by {node})");
    }
    let width = versions
        .iter()
        .map(|v| v.decision.image.chars().count() + 1 + v.decision.version.chars().count())
        .max()
        .unwrap_or(0);
    for v in versions {
        let d = &v.decision;
        let name = format!("{} {}", d.image, d.version);
        let action = match (d.retention.removes(), dry_run) {
            (false, _) => "keep",
            (true, true) => "would remove",
            (true, false) => "removed",
        };
        let _ = writeln!(out, "{name:width$}  {action:12}  {}", d.retention.text());
    }
    let gone = versions
        .iter()
        .filter(|v| v.decision.retention.removes())
        .count();
    let resources: usize = versions.iter().map(|v| v.removed.len()).sum();
    if dry_run {
        let _ = writeln!(
            out,
            "gc --dry-run: {gone} of {} versions would be removed; nothing was changed.",
            versions.len()
        );
    } else {
        let _ = writeln!(
            out,
            "gc: {} leftovers destroyed, {gone} of {} versions removed ({resources} artifacts and snapshots).",
            leftovers.len(),
            versions.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ImageVersion;

    fn record(image: &str, version: &str, id: &str, holding: &[&str]) -> ImageRecord {
        ImageRecord {
            version: ImageVersion {
                image: image.into(),
                version: version.into(),
                artifact_id: id.into(),
                provider: "aws".into(),
                key: "k".into(),
                status: ReleaseStatus::Ready,
                built_at: 0,
                run: None,
                origin: None,
                revoked_reason: None,
            },
            environments: vec!["staging".into(), "production".into()],
            holding: holding.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn images_columns_line_up_with_ami_ids_and_show_what_environments_hold() {
        let text = images_text(
            &[
                record(
                    "web",
                    "2.3.1",
                    "ami-0123456789abcdef0",
                    &["staging", "production"],
                ),
                record("web", "2.3.0", "ami-0fedcba98765", &[]),
                record("base-with-long-name", "10.20.300", "local:abc", &[]),
            ],
            Palette::plain(),
        );
        let lines: Vec<&str> = text.lines().collect();
        let column = |name: &str| lines[0].find(name).expect("header");
        for l in &lines[1..] {
            assert_eq!(l.find("Ready"), Some(column("STATUS")), "{text}");
            assert_eq!(l.find("1970-"), Some(column("BUILT")), "{text}");
        }
        assert!(lines[1].ends_with("staging, production"), "{text}");
        assert!(
            !lines[2].contains("staging"),
            "2.3.0 was replaced everywhere: {text}"
        );
    }
}
