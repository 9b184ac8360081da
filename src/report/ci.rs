//! Failures in the form CI systems pick out of a job log, printed in addition to the
//! ordinary report (on stderr, so `--json` output on stdout stays clean).
//!
//! - **GitHub Actions** (`GITHUB_ACTIONS=true`): `::error` workflow commands, which become
//!   annotations on the run and, with `file`/`line`/`col`, on the config line itself.
//! - **GitLab CI** (`GITLAB_CI=true`): GitLab has no log annotation command; each failure
//!   gets its own expanded log section (`section_start`/`section_end`) with a red header,
//!   which GitLab lists in the job log's outline.

use std::fmt::Write as _;
use std::path::Path;

use miette::Diagnostic;

use crate::exec::{NodeOutcome, RunSummary};

/// The CI system a command runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiSystem {
    GitHub,
    GitLab,
}

impl CiSystem {
    /// From the variables each system sets in every job.
    pub fn detect() -> Option<CiSystem> {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| v == "true");
        if set("GITHUB_ACTIONS") {
            Some(CiSystem::GitHub)
        } else if set("GITLAB_CI") {
            Some(CiSystem::GitLab)
        } else {
            None
        }
    }
}

/// One failure to annotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub title: String,
    pub message: String,
    /// File (as the user named it), 1-based line and column.
    pub location: Option<(String, usize, usize)>,
}

/// The annotations of a command's error: one per config diagnostic (located), or one for
/// the whole error with its causes.
pub fn error_annotations(ci: CiSystem, err: &dyn Diagnostic) -> String {
    let mut list = Vec::new();
    collect(err, &mut list);
    if list.is_empty() {
        list.push(Annotation {
            title: "imgraph".into(),
            message: crate::text::error_chain(err),
            location: None,
        });
    }
    render(ci, &list)
}

/// Diagnostics that carry a source location, depth first through `related`.
fn collect(diag: &dyn Diagnostic, out: &mut Vec<Annotation>) {
    if let Some(related) = diag.related() {
        for r in related {
            collect(r, out);
        }
    }
    let Some(source) = diag.source_code() else {
        return;
    };
    let Some(label) = diag.labels().and_then(|mut l| l.next()) else {
        return;
    };
    let Ok(span) = source.read_span(label.inner(), 0, 0) else {
        return;
    };
    let mut message = diag.to_string();
    if let Some(text) = label.label() {
        let _ = write!(message, " ({text})");
    }
    if let Some(help) = diag.help() {
        let _ = write!(message, "\nhelp: {help}");
    }
    let file = span
        .name()
        .unwrap_or(crate::config::CONFIG_FILE)
        .to_string();
    out.push(Annotation {
        title: diag
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "imgraph".into()),
        message,
        location: Some((file, span.line() + 1, span.column() + 1)),
    });
}

/// One annotation per failed node of an apply: its error, the end of its log, and the
/// log's path.
pub fn failure_annotations(ci: CiSystem, summary: &RunSummary, tail: usize) -> String {
    let list: Vec<Annotation> = summary
        .nodes
        .iter()
        .filter(|n| n.outcome == NodeOutcome::Failed)
        .map(|n| {
            let mut message = n.error.clone().unwrap_or_else(|| "failed".into());
            if let Some(log) = &n.log_path {
                for line in crate::process::log_tail(log, tail) {
                    let _ = write!(message, "\n{line}");
                }
                let _ = write!(message, "\nfull log: {}", log.display());
            }
            Annotation {
                title: format!("imgraph: {} failed", n.id),
                message,
                location: None,
            }
        })
        .collect();
    render(ci, &list)
}

/// The annotations in `ci`'s format.
pub fn render(ci: CiSystem, list: &[Annotation]) -> String {
    let mut out = String::new();
    for (i, a) in list.iter().enumerate() {
        match ci {
            CiSystem::GitHub => {
                let mut props = Vec::new();
                if let Some((file, line, col)) = &a.location {
                    props.push(format!("file={}", github_property(&github_path(file))));
                    props.push(format!("line={line}"));
                    props.push(format!("col={col}"));
                }
                props.push(format!("title={}", github_property(&a.title)));
                let _ = writeln!(
                    out,
                    "::error {}::{}",
                    props.join(","),
                    github_data(&a.message)
                );
            }
            CiSystem::GitLab => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let name = format!("imgraph_error_{}", i + 1);
                let place = a
                    .location
                    .as_ref()
                    .map(|(f, l, c)| format!(" at {f}:{l}:{c}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "\x1b[0Ksection_start:{now}:{name}[collapsed=false]\r\x1b[0K\x1b[31;1mERROR {}{place}\x1b[0m",
                    a.title
                );
                for line in a.message.lines() {
                    let _ = writeln!(out, "{line}");
                }
                let _ = writeln!(out, "\x1b[0Ksection_end:{now}:{name}\r\x1b[0K");
            }
        }
    }
    out
}

/// A config path as GitHub wants it: relative to the checkout (`GITHUB_WORKSPACE`).
fn github_path(file: &str) -> String {
    let path = Path::new(file);
    if let Some(ws) = std::env::var_os("GITHUB_WORKSPACE") {
        if let Ok(rel) = path.strip_prefix(Path::new(&ws)) {
            return rel.to_string_lossy().into_owned();
        }
    }
    file.to_string()
}

/// Escapes a workflow command's message.
fn github_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a workflow command's property value.
fn github_property(text: &str) -> String {
    github_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_commands_escape_what_would_end_them() {
        let a = Annotation {
            title: "imgraph: a, b".into(),
            message: "50% done\nnext".into(),
            location: Some(("imgraph.kdl".into(), 2, 5)),
        };
        assert_eq!(
            render(CiSystem::GitHub, &[a]),
            "::error file=imgraph.kdl,line=2,col=5,title=imgraph%3A a%2C b::50%25 done%0Anext\n"
        );
    }

    #[test]
    fn gitlab_sections_open_and_close_with_the_same_name() {
        let a = Annotation {
            title: "imgraph: build:base failed".into(),
            message: "exit 1\nlast line".into(),
            location: None,
        };
        let text = render(CiSystem::GitLab, &[a]);
        assert!(
            text.contains(":imgraph_error_1[collapsed=false]\r"),
            "{text:?}"
        );
        assert!(
            text.contains("ERROR imgraph: build:base failed"),
            "{text:?}"
        );
        assert!(text.contains("\nlast line\n"), "{text:?}");
        assert!(text.contains(":imgraph_error_1\r"), "{text:?}");
    }
}
