//! `imgraph plan` renderings: a terraform-like text view and the versioned JSON document.
//!
//! The text groups nodes by action, puts one node per line with its first reason, and
//! shows root causes apart from cascades, so "1 changed file forces 40 nodes" reads as one
//! cause and 39 cascades.

use std::fmt::Write as _;
use std::time::Duration;

use super::{short_id, timestamp, Palette};
use crate::plan::{Action, PackageChange, Plan, PlannedNode, Reason};

/// How a changed leaf input reads: a file path (with the packages a package list gained
/// and lost), or a probe's output.
fn input_text(path: &str, change: crate::plan::Change, packages: Option<&PackageChange>) -> String {
    let mut text = match path.strip_prefix("probe:") {
        Some(name) => match change {
            crate::plan::Change::Modified => format!("probe `{name}` output changed"),
            other => format!("probe `{name}` {}", other.as_str()),
        },
        None => format!("`{path}` {}", change.as_str()),
    };
    if let Some(p) = packages {
        let mut parts: Vec<String> = p.added.iter().map(|a| format!("+{a}")).collect();
        parts.extend(p.removed.iter().map(|r| format!("-{r}")));
        text.push_str(&format!(": {}", parts.join(" ")));
    }
    text
}

/// One sentence per reason, in the user's words.
pub fn reason_text(r: &Reason) -> String {
    match r {
        Reason::New => "new: never built or run successfully".into(),
        Reason::InputChanged {
            path,
            change,
            trigger,
            packages,
        } => {
            let text = input_text(path, *change, packages.as_ref());
            match trigger {
                crate::config::model::Trigger::Immediate => text,
                crate::config::model::Trigger::Rollup => {
                    format!("{text} (rollup: waits for a roll-up run)")
                }
            }
        }
        Reason::ConfigChanged { fields } => format!("config changed: {}", fields.join(", ")),
        Reason::SourceChanged { source, old, new } => {
            if old.is_empty() {
                format!("source `{source}` now resolves to {}", short_id(new))
            } else {
                format!(
                    "source `{source}` changed: {} → {}",
                    short_id(old),
                    short_id(new)
                )
            }
        }
        Reason::UpstreamChanged { node } => format!("cascade from {node}"),
        Reason::MaxAge {
            built_at_ms,
            max_age_secs,
        } => format!(
            "older than max-age {} (built {})",
            humantime::format_duration(Duration::from_secs(*max_age_secs)),
            timestamp(*built_at_ms)
        ),
        Reason::Rollup {
            path,
            change,
            packages,
        } => format!("roll-up: {}", input_text(path, *change, packages.as_ref())),
        Reason::PreviousFailure { error } => match error {
            Some(e) => format!("the last run with this key failed: {e}"),
            None => "the last run with this key failed".into(),
        },
        Reason::ArtifactMissing { artifact } => {
            format!("artifact {} no longer exists", short_id(artifact))
        }
        Reason::Forced => "forced with --force".into(),
    }
}

/// The human rendering of a plan.
pub fn render_text(plan: &Plan, p: Palette) -> String {
    let mut out = String::new();
    let width = plan
        .nodes
        .iter()
        .map(|n| n.id.len())
        .max()
        .unwrap_or(10)
        .max(10);

    if !plan.sources.is_empty() {
        let _ = writeln!(out, "{}", p.bold("Sources"));
        for s in &plan.sources {
            let tail = match &s.previous_id {
                Some(old) if old != &s.id => p.yellow(&format!("  (was {})", short_id(old))),
                _ => String::new(),
            };
            let _ = writeln!(out, "  {:width$}  {}{}", s.name, short_id(&s.id), tail);
        }
        out.push('\n');
    }

    let group = |action: Action| plan.nodes.iter().filter(move |n| n.action == action);
    let runs: Vec<&PlannedNode> = group(Action::Run).collect();
    if !runs.is_empty() {
        let _ = writeln!(out, "{}", p.bold("Will run"));
        for n in &runs {
            let (mark, id) = if n.cascade {
                ("~", p.dim(&n.id))
            } else {
                ("+", p.green(&n.id))
            };
            write_node(&mut out, mark, &id, n, width, p);
        }
        out.push('\n');
    }
    let deferred: Vec<&PlannedNode> = group(Action::Deferred).collect();
    if !deferred.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            p.bold("Deferred until a roll-up run (imgraph apply --rollup) or max-age")
        );
        for n in &deferred {
            write_node(&mut out, "…", &p.yellow(&n.id), n, width, p);
        }
        out.push('\n');
    }
    let fresh: Vec<&PlannedNode> = group(Action::UpToDate).collect();
    if !fresh.is_empty() {
        let _ = writeln!(out, "{}", p.bold("Up to date"));
        for n in &fresh {
            let key = n.previous_key.as_deref().map(short_id).unwrap_or_default();
            let _ = writeln!(
                out,
                "  = {}  {}",
                pad(&p.dim(&n.id), &n.id, width),
                p.dim(&key)
            );
        }
        out.push('\n');
    }

    let s = &plan.summary;
    let mut line = if s.run == 0 {
        "No changes to run".to_string()
    } else {
        format!(
            "Plan: {} to run ({} {}, {} {})",
            s.run,
            s.causes,
            plural(s.causes, "cause", "causes"),
            s.cascades,
            plural(s.cascades, "cascade", "cascades"),
        )
    };
    let _ = write!(
        line,
        "{}{} deferred, {} up to date",
        if s.run == 0 { ": " } else { ", " },
        s.deferred,
        s.up_to_date
    );
    if s.not_selected > 0 {
        let _ = write!(line, ", {} outside --target", s.not_selected);
    }
    line.push('.');
    let _ = writeln!(out, "{}", p.bold(&line));
    out
}

fn write_node(out: &mut String, mark: &str, id: &str, n: &PlannedNode, width: usize, p: Palette) {
    let mut lines: Vec<String> = Vec::new();
    let cascades: Vec<&str> = n
        .reasons
        .iter()
        .filter_map(|r| match r {
            Reason::UpstreamChanged { node } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    for r in &n.reasons {
        match r {
            Reason::UpstreamChanged { .. } => {}
            Reason::InputChanged {
                path,
                change,
                trigger: crate::config::model::Trigger::Rollup,
                packages,
            } if n.action == Action::Run => lines.push(format!(
                "{} (rollup change, included in this run)",
                input_text(path, *change, packages.as_ref())
            )),
            other => lines.push(reason_text(other)),
        }
    }
    if !cascades.is_empty() {
        lines.push(format!("cascade from {}", cascades.join(", ")));
    }
    let mut lines = lines.into_iter();
    let first = lines.next().unwrap_or_default();
    let _ = writeln!(out, "  {mark} {}  {first}", pad(id, &n.id, width));
    for line in lines {
        let _ = writeln!(out, "    {:width$}  {}", "", p.dim(&line));
    }
}

/// Pads a possibly coloured `shown` string to `width` visible characters of `plain`.
fn pad(shown: &str, plain: &str, width: usize) -> String {
    let fill = width.saturating_sub(plain.chars().count());
    format!("{shown}{}", " ".repeat(fill))
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// The `plan --json` document (pretty-printed, stable field order).
pub fn render_json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
