//! `imgraph apply` reporters, fed by the executor's event stream.
//!
//! - [`Human`]: on a terminal, a live view (indicatif: one line per running node with its
//!   elapsed time) with finished nodes printed above it; elsewhere (CI logs), plain
//!   timestamped lines. At the end, a summary table and, for each failed node, the last
//!   lines of its log and the log's path.
//! - [`to_ndjson`](crate::exec::events::to_ndjson): versioned NDJSON, one event a line.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{timestamp, Palette};
use crate::exec::{Event, NodeOutcome, RunSummary};
use crate::graph::NodeId;
use crate::process::log_tail;

/// How many log lines a failure summary shows.
pub const FAILURE_TAIL_LINES: usize = 15;

pub struct Human {
    palette: Palette,
    /// `-q`: no progress lines, only failures and the summary.
    quiet: bool,
    live: Option<MultiProgress>,
    bars: HashMap<NodeId, ProgressBar>,
}

impl Human {
    /// `live` draws progress bars (only when stdout is a terminal).
    pub fn new(palette: Palette, live: bool) -> Self {
        let live = live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        Human {
            palette,
            quiet: false,
            live,
            bars: HashMap::new(),
        }
    }

    /// Leaves out progress (run start, node start, node success); failures, skips and the
    /// summary are still printed.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        if quiet {
            self.live = None;
        }
        self
    }

    fn line(&self, text: &str) {
        match &self.live {
            Some(mp) => {
                let _ = mp.println(text);
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{} {text}", timestamp(crate::state::now_ms()));
            }
        }
    }

    pub fn handle(&mut self, event: &Event) {
        let p = self.palette;
        match event {
            Event::RunStarted {
                run_id,
                nodes,
                parallelism,
                summary,
            } => {
                if !nodes.is_empty() && !self.quiet {
                    self.line(&format!(
                        "run {run_id}: {} to run ({} {}, {} {}), {} deferred, {} up to date; up to {parallelism} at a time",
                        nodes.len(),
                        summary.causes,
                        if summary.causes == 1 { "cause" } else { "causes" },
                        summary.cascades,
                        if summary.cascades == 1 { "cascade" } else { "cascades" },
                        summary.deferred,
                        summary.up_to_date,
                    ))
                }
            }
            Event::NodeStarted { node, .. } => {
                if self.quiet {
                    return;
                }
                if let Some(mp) = &self.live {
                    let bar = mp.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(node.to_string());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    self.bars.insert(node.clone(), bar);
                } else {
                    self.line(&format!("start   {node}"));
                }
            }
            Event::NodeFinished {
                node,
                outcome,
                duration_ms,
                error,
                ..
            } => {
                if let Some(bar) = self.bars.remove(node) {
                    bar.finish_and_clear();
                }
                if self.quiet && *outcome == NodeOutcome::Succeeded {
                    return;
                }
                let secs = format!("{:.1}s", *duration_ms as f64 / 1000.0);
                let text = match outcome {
                    NodeOutcome::Succeeded => format!("{}      {node} ({secs})", p.green("ok")),
                    NodeOutcome::Cancelled => format!("{} {node} ({secs})", p.yellow("cancelled")),
                    _ => format!(
                        "{}  {node} ({secs}): {}",
                        p.red("failed"),
                        error.as_deref().unwrap_or("")
                    ),
                };
                self.line(&text);
            }
            Event::NodeSkipped { node, cause } => {
                self.line(&format!("{}    {node}: {cause}", p.yellow("skip")));
            }
            Event::NodeCutOff { node, note } => {
                self.line(&format!("{}    {node}: {note}", p.green("same")));
            }
            Event::LeftoverDestroyed {
                resource,
                kind,
                node,
            } => {
                self.line(&format!(
                    "cleaned up {kind} {resource} left by {node} in an earlier run"
                ));
            }
            Event::RunFinished(summary) => {
                if let Some(mp) = &self.live {
                    let _ = mp.clear();
                }
                crate::report::out(&render_summary(summary, p));
            }
        }
    }
}

/// The final table, failure details and one closing line.
pub fn render_summary(summary: &RunSummary, p: Palette) -> String {
    let mut out = String::new();
    if summary.nodes.is_empty() {
        let _ = writeln!(out, "\nNothing to run: every selected node is up to date.");
        return out;
    }
    let width = summary
        .nodes
        .iter()
        .map(|n| n.id.as_str().len())
        .max()
        .unwrap_or(10);
    let _ = writeln!(out, "\n{:width$}  {:10}  {:>8}", "NODE", "OUTCOME", "TIME");
    for n in &summary.nodes {
        let outcome = match n.outcome {
            NodeOutcome::Succeeded | NodeOutcome::UpToDate => {
                p.green(&format!("{:10}", n.outcome.as_str()))
            }
            NodeOutcome::Failed => p.red(&format!("{:10}", n.outcome.as_str())),
            _ => p.yellow(&format!("{:10}", n.outcome.as_str())),
        };
        let time = n
            .duration_ms
            .map(|d| format!("{:.1}s", d as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "{:width$}  {outcome}  {time:>8}", n.id);
    }
    for n in summary
        .nodes
        .iter()
        .filter(|n| n.outcome == NodeOutcome::Failed)
    {
        let _ = writeln!(
            out,
            "\n{} {}: {}",
            p.red("✗"),
            n.id,
            n.error.as_deref().unwrap_or("")
        );
        if let Some(log) = &n.log_path {
            for line in log_tail(log, FAILURE_TAIL_LINES) {
                let _ = writeln!(out, "  │ {line}");
            }
            let _ = writeln!(out, "  full log: {}", log.display());
        }
    }
    let ok = summary.count(NodeOutcome::Succeeded);
    let failed = summary.count(NodeOutcome::Failed);
    let skipped = summary.count(NodeOutcome::Skipped);
    let cancelled = summary.count(NodeOutcome::Cancelled);
    let cut = summary.count(NodeOutcome::UpToDate);
    let cut = if cut > 0 {
        format!(", {cut} up to date by early cutoff")
    } else {
        String::new()
    };
    let line = format!(
        "Apply {}: {ok} succeeded, {failed} failed, {skipped} skipped, {cancelled} cancelled{cut} in {:.1}s (run {}).",
        if summary.interrupted {
            "interrupted"
        } else if failed + skipped + cancelled > 0 {
            "failed"
        } else {
            "complete"
        },
        summary.duration_ms as f64 / 1000.0,
        summary.run_id,
    );
    let _ = writeln!(out, "\n{}", p.bold(&line));
    out
}
