//! Saved plans in words: `imgraph show FILE` and the reasons `imgraph apply FILE` gives
//! when it refuses a plan that no longer describes the project.

use std::fmt::Write as _;

use super::plan::{input_text, reason_text, render_text};
use super::{short_id, timestamp, Palette};
use crate::graph::NodeId;
use crate::plan::saved::{Drift, SavedPlan};

/// One line per difference, naming what moved and, where it helps, old → new.
pub fn drift_text(d: &Drift) -> String {
    match d {
        Drift::OtherState { planned, now } => format!(
            "the plan was made against another state file (lineage {}, this one is {})",
            short_lineage(planned),
            short_lineage(now)
        ),
        Drift::StateChanged { planned, now } => format!(
            "the state changed since the plan: serial {planned} → {now} (another command recorded runs, images or deliveries)"
        ),
        Drift::SourceChanged {
            source,
            planned,
            now,
        } => {
            if now.is_empty() {
                format!(
                    "source `{source}` no longer resolves (planned with {})",
                    short_id(planned)
                )
            } else {
                format!(
                    "source `{source}` now resolves to {} (planned with {})",
                    short_id(now),
                    short_id(planned)
                )
            }
        }
        Drift::InputChanged {
            path,
            change,
            via,
            mode,
            planned,
            now,
            nodes,
        } => {
            let digests = match (planned, now) {
                (Some(a), Some(b)) => format!(": {} → {}", short_id(a), short_id(b)),
                (None, Some(b)) => format!(": now {}", short_id(b)),
                (Some(a), None) => format!(": was {}", short_id(a)),
                (None, None) => String::new(),
            };
            format!(
                "{}{digests} (an input of {})",
                input_text(path, *change, *via, mode.as_ref(), None),
                nodes.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", ")
            )
        }
        Drift::ConfigChanged { node } => format!("the config of {node} changed"),
        Drift::NodeAdded { node } => format!("{node} is new in the config"),
        Drift::NodeRemoved { node } => format!("{node} is no longer in the config"),
        Drift::DecisionChanged {
            node,
            planned,
            now,
            reasons,
        } => {
            let why = reasons
                .first()
                .map(|r| format!(": {}", reason_text(r)))
                .unwrap_or_default();
            format!(
                "{node} is now {} instead of {}{why}",
                now.as_str(),
                planned.as_str()
            )
        }
    }
}

fn short_lineage(l: &str) -> &str {
    l.get(..12).unwrap_or(l)
}

/// `imgraph show FILE`: where the plan comes from, then the plan as `imgraph plan` shows it.
pub fn show_text(saved: &SavedPlan, file: &str, p: Palette) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", p.bold(&format!("Saved plan {file}")));
    let _ = writeln!(
        out,
        "  made {} by imgraph {}, against state {} at serial {}",
        timestamp(saved.created_at_ms),
        saved.imgraph_version,
        short_lineage(&saved.state.lineage),
        saved.state.serial
    );
    let mut options = Vec::new();
    if saved.plan.rollup {
        options.push("--rollup".to_string());
    }
    options.extend(saved.plan.targets.iter().map(|t| format!("--target {t}")));
    options.extend(saved.plan.forced.iter().map(|f| format!("--force {f}")));
    if !options.is_empty() {
        let _ = writeln!(out, "  options: {}", options.join(" "));
    }
    let _ = writeln!(out, "  apply it with: imgraph apply {file}");
    out.push('\n');
    out.push_str(&render_text(&saved.plan, p));
    out
}
