//! The shape of nodes: the checks every stanza shares, with their messages (unknown
//! names with "did you mean", missing and extra arguments, wrong value types, repeated
//! nodes and names, durations, commands, keyword choices), so that each stanza's own file
//! reads as the shape of the language.

use std::collections::HashMap;
use std::time::Duration;

use miette::SourceSpan;

use super::keywords::Keyword;
use super::{Str, V};
use crate::config::diag::{did_you_mean, suggestion};
use crate::config::model::Trigger;
use crate::config::raw::{Node, Scalar};

const DURATION_HELP: &str = "write a number and a unit, like \"7d\", \"12h\" or \"30m\"";

impl V<'_> {
    /// The nodes whose names are in `allowed`; the others are reported as unknown.
    pub(super) fn known<'n>(
        &mut self,
        nodes: &'n [Node],
        allowed: &[&str],
        place: &str,
    ) -> Vec<&'n Node> {
        let mut known = Vec::new();
        for node in nodes {
            if allowed.contains(&node.name.as_str()) {
                known.push(node);
            } else {
                let help = suggestion(&node.name, allowed, "expected one of");
                self.diags
                    .error(
                        "unknown_node",
                        node.name_span,
                        format!("unknown node `{}` {place}", node.name),
                        "unknown node",
                    )
                    .maybe_help(help);
            }
        }
        known
    }

    /// The children of `node` whose names are in `allowed`.
    pub(super) fn children<'n>(
        &mut self,
        node: &'n Node,
        allowed: &[&str],
        place: &str,
    ) -> Vec<&'n Node> {
        self.known(node.children(), allowed, place)
    }

    /// Reports properties not in `allowed`, and properties given twice.
    pub(super) fn props(&mut self, node: &Node, allowed: &[&str]) {
        for (i, prop) in node.props.iter().enumerate() {
            if let Some(first) = node.props[..i].iter().find(|p| p.name == prop.name) {
                self.diags
                    .error(
                        "duplicate_property",
                        prop.name_span,
                        format!("property `{}` is given twice on `{}`", prop.name, node.name),
                        "given again here",
                    )
                    .label(first.name_span, "first given here")
                    .help("give each property once");
                continue;
            }
            if allowed.contains(&prop.name.as_str()) {
                continue;
            }
            let help = if allowed.is_empty() {
                Some(format!("`{}` takes no properties", node.name))
            } else {
                suggestion(&prop.name, allowed, "expected")
            };
            self.diags
                .error(
                    "unknown_property",
                    prop.name_span,
                    format!("unknown property `{}` on `{}`", prop.name, node.name),
                    "unknown property",
                )
                .maybe_help(help);
        }
    }

    /// Reports a `{ }` block with nodes in it on a node that takes none.
    pub(super) fn no_children(&mut self, node: &Node) {
        if !node.children().is_empty() {
            self.diags
                .error(
                    "unexpected_children",
                    node.children_span,
                    format!("`{}` takes no children", node.name),
                    "unexpected block",
                )
                .help("remove the `{ ... }` block");
        }
    }

    /// Exactly one string argument per entry of `what` (which describes each, e.g. "a
    /// name"). `usage` shows the correct form in help texts.
    pub(super) fn args(&mut self, node: &Node, what: &[&str], usage: &str) -> Option<Vec<Str>> {
        self.args_as(node, what, usage, "a string")
    }

    /// A `NAME "KEY" "VALUE"` leaf (tag filters, packer vars): the key, with its span for
    /// duplicate checks, and the value.
    pub(super) fn pair(
        &mut self,
        node: &Node,
        what: [&str; 2],
        usage: &str,
    ) -> Option<(Str, String)> {
        self.props(node, &[]);
        self.no_children(node);
        let mut kv = self.args(node, &what, usage)?;
        let value = kv.pop().map(|s| s.value).unwrap_or_default();
        let key = kv.pop()?;
        Some((key, value))
    }

    /// [`V::args`] with a custom description of the expected value for type errors.
    pub(super) fn args_as(
        &mut self,
        node: &Node,
        what: &[&str],
        usage: &str,
        expected: &str,
    ) -> Option<Vec<Str>> {
        let mut ok = true;
        if let [first, rest @ ..] = node.args.get(what.len()..).unwrap_or(&[]) {
            let mut d = self
                .diags
                .error(
                    "unexpected_argument",
                    first.span,
                    format!(
                        "`{}` takes {}, found {}",
                        node.name,
                        count(what.len(), "argument"),
                        node.args.len()
                    ),
                    "unexpected argument",
                )
                .help(format!("write it as `{usage}`"));
            for extra in rest {
                d = d.label(extra.span, "unexpected argument");
            }
            ok = false;
        }
        let mut out = Vec::new();
        for (i, description) in what.iter().enumerate() {
            let Some(arg) = node.args.get(i) else {
                self.diags
                    .error(
                        "missing_argument",
                        node.head_span,
                        format!("`{}` is missing {description}", node.name),
                        format!("needs {description}"),
                    )
                    .help(format!("write it as `{usage}`"));
                return None;
            };
            match &arg.value {
                Scalar::String(s) => out.push(Str {
                    value: s.clone(),
                    span: arg.span,
                }),
                other => {
                    self.wrong_type(arg.span, expected, other, usage);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// The one string argument of a node.
    pub(super) fn arg(&mut self, node: &Node, what: &str, usage: &str) -> Option<Str> {
        self.args(node, &[what], usage)?.pop()
    }

    /// A leaf node with exactly one string argument: no properties, no children.
    pub(super) fn leaf(&mut self, node: &Node, what: &str, usage: &str) -> Option<Str> {
        self.leaf_as(node, what, usage, "a string")
    }

    pub(super) fn leaf_as(
        &mut self,
        node: &Node,
        what: &str,
        usage: &str,
        expected: &str,
    ) -> Option<Str> {
        self.props(node, &[]);
        self.no_children(node);
        self.args_as(node, &[what], usage, expected)?.pop()
    }

    /// A string property; `None` when absent or not a string (which is reported).
    pub(super) fn prop_str(&mut self, node: &Node, key: &str, usage: &str) -> Option<Str> {
        let prop = node.prop(key)?;
        match &prop.value.value {
            Scalar::String(s) => Some(Str {
                value: s.clone(),
                span: prop.value.span,
            }),
            other => {
                self.wrong_type(prop.value.span, "a string", other, usage);
                None
            }
        }
    }

    /// A string property that must be there.
    pub(super) fn required_prop(&mut self, node: &Node, key: &str, usage: &str) -> Option<Str> {
        if node.prop(key).is_none() {
            self.diags
                .error(
                    "missing_property",
                    node.head_span,
                    format!("`{}` needs a `{key}` property", node.name),
                    format!("no `{key}=...`"),
                )
                .help(format!("write it as `{usage}`"));
            return None;
        }
        self.prop_str(node, key, usage)
    }

    pub(super) fn wrong_type(
        &mut self,
        span: SourceSpan,
        expected: &str,
        found: &Scalar,
        usage: &str,
    ) {
        self.diags
            .error(
                "wrong_type",
                span,
                format!("expected {expected}, found {}", found.kind()),
                found.kind(),
            )
            .help(format!("write it as `{usage}` (with quotes)"));
    }

    /// The first node named `name`; further ones are reported as repeated.
    pub(super) fn single<'n>(
        &mut self,
        nodes: &[&'n Node],
        name: &str,
        place: &str,
    ) -> Option<&'n Node> {
        let mut found = nodes.iter().copied().filter(|n| n.name == name);
        let first = found.next()?;
        for again in found {
            self.diags
                .error(
                    "duplicate_node",
                    again.name_span,
                    format!("`{name}` is given more than once {place}"),
                    "given again here",
                )
                .label(first.name_span, "first given here")
                .help(format!("keep only one `{name}`"));
        }
        Some(first)
    }

    pub(super) fn missing_child(&mut self, node: &Node, owner: &str, child: &str, help: String) {
        // A misspelt `bulid` is already reported with "did you mean `build`?".
        let misspelt = node
            .children()
            .iter()
            .any(|k| k.name != child && did_you_mean(&k.name, [child]).is_some());
        if misspelt {
            return;
        }
        self.diags
            .error(
                "missing_node",
                node.head_span,
                format!("{owner} has no `{child}`"),
                format!("needs a `{child}`"),
            )
            .help(help);
    }

    /// The keyword `s` names, or a reported error with "did you mean".
    pub(super) fn choice<K: Keyword>(
        &mut self,
        s: &Str,
        code: &'static str,
        what: &str,
    ) -> Option<K> {
        if let Some(k) = K::from_word(&s.value) {
            return Some(k);
        }
        let help = suggestion(&s.value, &K::words(), &format!("a {what} is one of"));
        self.diags
            .error(
                code,
                s.span,
                format!("unknown {what} `{}`", s.value),
                format!("unknown {what}"),
            )
            .maybe_help(help);
        None
    }

    pub(super) fn duration(&mut self, node: &Node, usage: &str) -> Option<Duration> {
        let s = self.leaf_as(
            node,
            "a duration",
            usage,
            &format!("a duration string like \"{}\"", example_of(usage)),
        )?;
        self.duration_value(&s, &node.name)
    }

    /// A duration string (`what` names it in the zero-length error).
    pub(super) fn duration_value(&mut self, s: &Str, what: &str) -> Option<Duration> {
        match humantime::parse_duration(s.value.trim()) {
            Ok(d) if d.is_zero() => {
                self.diags
                    .error(
                        "bad_duration",
                        s.span,
                        format!("`{what}` must be longer than zero"),
                        "zero duration",
                    )
                    .help(DURATION_HELP);
                None
            }
            Ok(d) => Some(d),
            Err(err) => {
                self.diags
                    .error(
                        "bad_duration",
                        s.span,
                        format!("invalid duration `{}`: {err}", s.value),
                        "not a duration",
                    )
                    .help(DURATION_HELP);
                None
            }
        }
    }

    /// A shell command argument; empty commands are refused.
    pub(super) fn command(&mut self, node: &Node, usage: &str) -> Option<String> {
        let s = self.leaf(node, "a command", usage)?;
        self.nonempty_command(&s)
    }

    pub(super) fn nonempty_command(&mut self, s: &Str) -> Option<String> {
        if s.value.trim().is_empty() {
            self.diags
                .error("empty_command", s.span, "command is empty", "empty command")
                .help("give a shell command to run with `sh -c`");
            return None;
        }
        Some(s.value.clone())
    }

    pub(super) fn trigger(&mut self, node: &Node, default: Trigger, usage: &str) -> Trigger {
        let Some(s) = self.prop_str(node, "trigger", usage) else {
            return default;
        };
        self.choice(&s, "unknown_value", "trigger")
            .unwrap_or(default)
    }

    /// Reports `name` when it was already seen in `seen` (same scope), else records it.
    pub(super) fn unique(
        &mut self,
        seen: &mut HashMap<String, SourceSpan>,
        s: &Str,
        message: String,
        help: &str,
    ) -> bool {
        if let Some(first) = seen.get(&s.value) {
            self.diags
                .error("duplicate_name", s.span, message, "defined again here")
                .label(*first, "first defined here")
                .help(help);
            return false;
        }
        seen.insert(s.value.clone(), s.span);
        true
    }
}

/// `"10m"` from `timeout "10m"`, for type error messages.
pub(super) fn example_of(usage: &str) -> &str {
    usage.split('"').nth(1).unwrap_or("10m")
}

pub(super) fn count(n: usize, noun: &str) -> String {
    match n {
        0 => format!("no {noun}s"),
        1 => format!("1 {noun}"),
        _ => format!("{n} {noun}s"),
    }
}
