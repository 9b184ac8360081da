//! Config diagnostics: one error found in `imgraph.kdl`, with the file, labelled spans, a
//! code and an optional help line, rendered by miette as `[imgraph.kdl:LINE:COL]`.
//!
//! Validation never stops at the first problem: every check pushes into a [`Diags`]
//! collector and carries on with what it could make sense of, so a user fixes all errors in
//! one round. Each diagnostic holds its own (cheaply shared) copy of the source text, which
//! is what lets miette render it alone or as one of several `related` errors.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};

/// The config text under its file name, shared by every diagnostic of one load.
pub(crate) type Source = NamedSource<Arc<String>>;

/// One problem in the config file.
#[derive(Debug, Clone)]
pub struct ConfigDiagnostic {
    /// The code without its `imgraph::config::` prefix.
    kind: &'static str,
    message: String,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
    source: Source,
}

impl ConfigDiagnostic {
    /// The stable error code, e.g. `imgraph::config::unknown_node`.
    pub fn code(&self) -> String {
        format!("imgraph::config::{}", self.kind)
    }

    /// The last part of the code, e.g. `unknown_node`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// Byte offset of the primary label (the first one), used to sort diagnostics.
    pub fn offset(&self) -> usize {
        self.labels.first().map_or(0, |l| l.offset())
    }
}

impl fmt::Display for ConfigDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigDiagnostic {}

impl Diagnostic for ConfigDiagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(ConfigDiagnostic::code(self)))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

/// Collects diagnostics for one config file.
pub(crate) struct Diags {
    source: Source,
    len: usize,
    list: Vec<ConfigDiagnostic>,
}

impl Diags {
    pub(crate) fn new(file_name: &str, text: Arc<String>) -> Self {
        let len = text.len();
        Diags {
            source: NamedSource::new(file_name, text),
            len,
            list: Vec::new(),
        }
    }

    /// Starts a diagnostic of `kind` (the code after `imgraph::config::`) whose primary
    /// label sits on `span`. It is recorded when the returned builder is dropped.
    pub(crate) fn error(
        &mut self,
        kind: &'static str,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Builder<'_> {
        let span = self.clamp(span);
        let diag = ConfigDiagnostic {
            kind,
            message: message.into(),
            labels: vec![LabeledSpan::new_primary_with_span(Some(label.into()), span)],
            help: None,
            source: self.source.clone(),
        };
        Builder {
            diags: self,
            diag: Some(diag),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The diagnostics in file order (stable for ones at the same place).
    pub(crate) fn into_sorted(mut self) -> Vec<ConfigDiagnostic> {
        self.list.sort_by_key(ConfigDiagnostic::offset);
        self.list
    }

    /// Spans come from the KDL parser and our own arithmetic; keeping them inside the text
    /// means rendering can never fail on them.
    fn clamp(&self, span: SourceSpan) -> SourceSpan {
        let start = span.offset().min(self.len);
        let end = (span.offset().saturating_add(span.len())).min(self.len);
        SourceSpan::new(start.into(), end - start)
    }
}

/// Adds labels and help to a diagnostic, then records it on drop.
pub(crate) struct Builder<'a> {
    diags: &'a mut Diags,
    diag: Option<ConfigDiagnostic>,
}

impl Builder<'_> {
    pub(crate) fn label(mut self, span: SourceSpan, text: impl Into<String>) -> Self {
        let span = self.diags.clamp(span);
        if let Some(d) = self.diag.as_mut() {
            d.labels
                .push(LabeledSpan::new_with_span(Some(text.into()), span));
        }
        self
    }

    pub(crate) fn help(mut self, text: impl Into<String>) -> Self {
        if let Some(d) = self.diag.as_mut() {
            d.help = Some(text.into());
        }
        self
    }

    /// Help that is only there when there is something to say.
    pub(crate) fn maybe_help(self, text: Option<String>) -> Self {
        match text {
            Some(t) => self.help(t),
            None => self,
        }
    }
}

impl Drop for Builder<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.diag.take() {
            self.diags.list.push(d);
        }
    }
}

/// The candidate closest to `name`, if it is close enough to be what the user meant.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        if candidate == name {
            continue;
        }
        let similarity = strsim::jaro_winkler(name, candidate);
        // Swapped neighbours (`wbe` for `web`) count as one edit.
        let distance = strsim::osa_distance(name, candidate);
        // Short names are all within 2 edits of each other; only count edits when they
        // change a small part of the word.
        let longest = name.chars().count().max(candidate.chars().count());
        let close = similarity > 0.8 || (distance <= 2 && distance * 3 <= longest);
        if close && best.is_none_or(|(s, _)| similarity > s) {
            best = Some((similarity, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// `did you mean `x`?`, or the full list of valid names when nothing is close.
pub(crate) fn suggestion(name: &str, candidates: &[&str], what: &str) -> Option<String> {
    if let Some(close) = did_you_mean(name, candidates.iter().copied()) {
        return Some(format!("did you mean `{close}`?"));
    }
    if candidates.is_empty() {
        return None;
    }
    Some(format!("{what}: {}", quoted_list(candidates)))
}

/// `` `a`, `b` and `c` ``
pub(crate) fn quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["image", "source", "environment", "provider"];
        assert_eq!(did_you_mean("imag", names), Some("image"));
        assert_eq!(did_you_mean("enviroment", names), Some("environment"));
        assert_eq!(did_you_mean("sorce", names), Some("source"));
        assert_eq!(did_you_mean("zzz", names), None);
        assert_eq!(did_you_mean("ab", ["cd"]), None);
        assert_eq!(did_you_mean("wbe", ["base", "web"]), Some("web"));
    }

    #[test]
    fn lists_read_naturally() {
        assert_eq!(quoted_list(&["a"]), "`a`");
        assert_eq!(quoted_list(&["a", "b", "c"]), "`a`, `b` or `c`");
    }
}
