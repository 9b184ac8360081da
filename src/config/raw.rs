//! The raw layer: the parsed KDL document as a plain tree of nodes, arguments and
//! properties, each with the byte span it came from.
//!
//! It knows nothing about imgraph's language; it only makes the KDL tree easy to walk and
//! point into. Type annotations (`(t)"x"`) are dropped: imgraph gives them no meaning.
//! Property value spans are computed from the source text because `kdl` only gives the span
//! of the whole `key=value` entry.

use miette::SourceSpan;

use super::diag::Diags;

/// A scalar value as written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    String(String),
    Integer(i128),
    Float(f64),
    Bool(bool),
    Null,
}

impl Scalar {
    /// What this is, for "expected a string, found ..." messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Scalar::String(_) => "a string",
            Scalar::Integer(_) | Scalar::Float(_) => "a number",
            Scalar::Bool(_) => "a boolean",
            Scalar::Null => "#null",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub value: Scalar,
    pub span: SourceSpan,
}

#[derive(Debug, Clone)]
pub(crate) struct Prop {
    pub name: String,
    pub name_span: SourceSpan,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name: String,
    pub name_span: SourceSpan,
    /// From the node name to the end of its last argument or property (not the children).
    pub head_span: SourceSpan,
    pub args: Vec<Value>,
    pub props: Vec<Prop>,
    /// `None` when the node has no `{ }` block at all.
    pub children: Option<Vec<Node>>,
    /// The inside of the `{ }` block (or the head when the block is empty).
    pub children_span: SourceSpan,
}

impl Node {
    pub(crate) fn children(&self) -> &[Node] {
        self.children.as_deref().unwrap_or(&[])
    }

    pub(crate) fn prop(&self, name: &str) -> Option<&Prop> {
        self.props.iter().find(|p| p.name == name)
    }
}

/// How deep `{ }` blocks may nest. imgraph's language needs four levels; the KDL parser
/// recurses once per level, so thousands of levels would overflow its stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// Parses KDL 2.0 text into raw nodes; syntax errors become diagnostics.
pub(crate) fn parse(text: &str, diags: &mut Diags) -> Option<Vec<Node>> {
    if let Some(at) = too_deep(text, MAX_DEPTH) {
        diags
            .error(
                "syntax",
                SourceSpan::new(at.into(), 1),
                format!("blocks are nested more than {MAX_DEPTH} levels deep"),
                "this block is too deep",
            )
            .help("imgraph's config needs at most four levels of `{ }`");
        return None;
    }
    match text.parse::<kdl::KdlDocument>() {
        Ok(doc) => Some(nodes(&doc, text)),
        Err(err) => {
            // kdl reports an unclosed block twice, once at its `{` and once over its body;
            // the first says it all.
            let unclosed_block = err
                .diagnostics
                .iter()
                .any(|d| d.message.as_deref() == Some("No closing '}' for child block"));
            for d in &err.diagnostics {
                if unclosed_block
                    && d.message.as_deref() == Some("Closing '}' was not found after nodes")
                {
                    continue;
                }
                let message = d
                    .message
                    .as_deref()
                    .map(lowercase_first)
                    .unwrap_or_else(|| "invalid KDL syntax".to_owned());
                let label = syntax_label(d.label.as_deref());
                diags
                    .error("syntax", syntax_span(text, d.span), message, label)
                    .maybe_help(d.help.as_deref().map(lowercase_first));
            }
            if err.diagnostics.is_empty() {
                diags.error(
                    "syntax",
                    SourceSpan::new(0.into(), 0),
                    "invalid KDL syntax",
                    "in this file",
                );
            }
            None
        }
    }
}

fn nodes(doc: &kdl::KdlDocument, text: &str) -> Vec<Node> {
    doc.nodes().iter().map(|n| node(n, text)).collect()
}

fn node(n: &kdl::KdlNode, text: &str) -> Node {
    let name_span = n.name().span();
    let mut args = Vec::new();
    let mut props = Vec::new();
    let mut head_end = name_span.offset() + name_span.len();
    for entry in n.entries() {
        let span = entry.span();
        head_end = head_end.max(span.offset() + span.len());
        let value = scalar(entry.value());
        match entry.name() {
            None => args.push(Value { value, span }),
            Some(key) => props.push(Prop {
                name: key.value().to_owned(),
                name_span: key.span(),
                value: Value {
                    value,
                    span: prop_value_span(text, key.span(), span),
                },
            }),
        }
    }
    let head_span = SourceSpan::new(
        name_span.offset().into(),
        head_end.saturating_sub(name_span.offset()),
    );
    let (children, children_span) = match n.children() {
        Some(doc) => {
            let span = doc.span();
            let span = if span.is_empty() { head_span } else { span };
            (Some(nodes(doc, text)), span)
        }
        None => (None, head_span),
    };
    Node {
        name: n.name().value().to_owned(),
        name_span,
        head_span,
        args,
        props,
        children,
        children_span,
    }
}

fn scalar(v: &kdl::KdlValue) -> Scalar {
    match v {
        kdl::KdlValue::String(s) => Scalar::String(s.clone()),
        kdl::KdlValue::Integer(i) => Scalar::Integer(*i),
        kdl::KdlValue::Float(f) => Scalar::Float(*f),
        kdl::KdlValue::Bool(b) => Scalar::Bool(*b),
        kdl::KdlValue::Null => Scalar::Null,
    }
}

/// The span of the value in `key = value`: after the `=` and any whitespace.
fn prop_value_span(text: &str, key: SourceSpan, entry: SourceSpan) -> SourceSpan {
    let entry_end = entry.offset() + entry.len();
    let after_key = key.offset() + key.len();
    let start = text
        .get(after_key..entry_end)
        .and_then(|rest| {
            let eq = rest.find('=')?;
            let value = &rest[eq + 1..];
            Some(after_key + eq + 1 + (value.len() - value.trim_start().len()))
        })
        .unwrap_or(entry.offset());
    SourceSpan::new(start.into(), entry_end.saturating_sub(start))
}

/// kdl labels say what the parser was looking for ("not EOF"); say what the user sees.
fn syntax_label(label: Option<&str>) -> String {
    match label {
        None => "here".to_owned(),
        Some("not EOF") => "unexpected text after the last node".to_owned(),
        Some("not float") | Some("not integer") => "invalid number".to_owned(),
        Some("not quoted string") => "unterminated string".to_owned(),
        Some("not property value") => "value expected after `=`".to_owned(),
        Some(other) => other.to_owned(),
    }
}

/// Some kdl errors span from the start of the file to the problem; the problem is at the
/// end, so point there.
fn syntax_span(text: &str, span: SourceSpan) -> SourceSpan {
    let end = span.offset() + span.len();
    let spans_lines = text
        .get(span.offset()..end)
        .is_some_and(|covered| covered.trim_end().contains('\n'));
    if span.offset() == 0 && spans_lines {
        SourceSpan::new(end.into(), 0)
    } else {
        span
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        // Keep acronyms and names ("KDL ...") as they are.
        Some(c) if !chars.next().is_some_and(char::is_uppercase) => {
            c.to_lowercase().chain(s[c.len_utf8()..].chars()).collect()
        }
        _ => s.to_owned(),
    }
}

/// The offset of the first `{` nested deeper than `max`, skipping strings and comments.
/// Runs before the parser, so it must not recurse: it counts.
pub(crate) fn too_deep(text: &str, max: usize) -> Option<usize> {
    let b = text.as_bytes();
    let (mut i, mut depth) = (0, 0usize);
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest in KDL.
                let mut level = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        level += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        level -= 1;
                        i += 2;
                        if level == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'#' | b'"' => {
                // `#"raw"#` (any number of #) or `"escaped"`; `"""` blocks end at `"""`.
                let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
                let q = i + hashes;
                if b.get(q) != Some(&b'"') {
                    i += hashes.max(1);
                    continue;
                }
                let triple = b[q..].starts_with(b"\"\"\"");
                let close: Vec<u8> = std::iter::repeat_n(b'"', if triple { 3 } else { 1 })
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                i = q + close.len() - hashes;
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += if hashes == 0 && b[i] == b'\\' { 2 } else { 1 };
                }
                i += close.len();
                continue;
            }
            b'{' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn parse_ok(text: &str) -> Vec<Node> {
        let mut diags = Diags::new("t.kdl", Arc::new(text.to_owned()));
        let nodes = parse(text, &mut diags);
        assert!(diags.is_empty());
        nodes.unwrap_or_default()
    }

    fn slice(text: &str, span: SourceSpan) -> &str {
        &text[span.offset()..span.offset() + span.len()]
    }

    #[test]
    fn keeps_spans_of_names_arguments_and_property_values() {
        let text = "image \"web\" {\n  copy \"a\" to = \"/b\" // note\n}\n";
        let nodes = parse_ok(text);
        let image = &nodes[0];
        assert_eq!(slice(text, image.name_span), "image");
        assert_eq!(slice(text, image.args[0].span), "\"web\"");
        let copy = &image.children()[0];
        assert_eq!(slice(text, copy.head_span), "copy \"a\" to = \"/b\"");
        let to = copy.prop("to").map(|p| slice(text, p.value.span));
        assert_eq!(to, Some("\"/b\""));
    }

    #[test]
    fn syntax_errors_become_diagnostics() {
        let text = "image \"a\" {\n  from \"x\n}\n";
        let mut diags = Diags::new("t.kdl", Arc::new(text.to_owned()));
        assert!(parse(text, &mut diags).is_none());
        let list = diags.into_sorted();
        assert!(!list.is_empty());
        assert!(list.iter().all(|d| d.kind() == "syntax"));
    }

    #[test]
    fn lowercases_sentences_but_not_acronyms() {
        assert_eq!(lowercase_first("Expected value"), "expected value");
        assert_eq!(lowercase_first("KDL is odd"), "KDL is odd");
        assert_eq!(lowercase_first(""), "");
    }
}
