//! The names of sources, images and environments, collected before any body is checked,
//! so that references may point forward in the file and resolve against first definitions.

use std::collections::HashMap;

use super::{NameKind, Str, V};
use crate::config::raw::{Node, Scalar};

impl V<'_> {
    /// Records every source and image name (first definition wins) and reports clashes.
    pub(super) fn declare_names(&mut self, top: &[&Node]) {
        for node in top {
            let kind = match node.name.as_str() {
                "source" => NameKind::Source,
                "image" => NameKind::Image,
                _ => continue,
            };
            let Some(name) = first_string(node) else {
                continue;
            };
            // Reported, and still declared, so that references to it say nothing more.
            self.printable_name(&name, node.name.as_str());
            if let Some((first_kind, first_span)) = self.names.get(&name.value) {
                let what = |k: NameKind| match k {
                    NameKind::Source => "source",
                    NameKind::Image => "image",
                };
                let (message, help) = if *first_kind == kind {
                    (
                        format!("{} `{}` is defined twice", what(kind), name.value),
                        format!("each {} needs its own name; rename one", what(kind)),
                    )
                } else {
                    (
                        format!(
                            "{} `{}` has the same name as a {}",
                            what(kind),
                            name.value,
                            what(*first_kind)
                        ),
                        "sources and images share one set of names, so that `from` can name either; rename one".to_owned(),
                    )
                };
                self.diags
                    .error("duplicate_name", name.span, message, "defined again here")
                    .label(*first_span, "first defined here")
                    .help(help);
                continue;
            }
            self.names.insert(name.value.clone(), (kind, name.span));
            self.name_order.push(name.value);
        }
    }

    /// Names are printed on terminals and used in file names: a control character (an
    /// escape sequence, a newline) in one is refused.
    pub(super) fn printable_name(&mut self, name: &Str, what: &str) {
        if !name.value.chars().any(char::is_control) {
            return;
        }
        self.diags
            .error(
                "control_character",
                name.span,
                format!(
                    "{what} name {:?} contains a control character",
                    name.value
                ),
                "control character in this name",
            )
            .help("names may hold letters, digits, punctuation and spaces, not escape sequences, tabs or newlines");
    }

    pub(super) fn declare_environments(&mut self, top: &[&Node]) {
        let mut seen = HashMap::new();
        for node in top.iter().filter(|n| n.name == "environment") {
            let Some(name) = first_string(node) else {
                continue;
            };
            self.printable_name(&name, "environment");
            if self.unique(
                &mut seen,
                &name,
                format!("environment `{}` is defined twice", name.value),
                "each environment needs its own name; rename one",
            ) {
                self.environments.insert(name.value.clone(), name.span);
                self.environment_order.push(name.value);
            }
        }
    }

    pub(super) fn names_of(&self, kind: Option<NameKind>) -> Vec<&str> {
        self.name_order
            .iter()
            .filter(|n| kind.is_none() || self.names.get(*n).map(|(k, _)| *k) == kind)
            .map(String::as_str)
            .collect()
    }
}

/// The first argument of a node when it is a string (its name), without reporting.
pub(super) fn first_string(node: &Node) -> Option<Str> {
    match node.args.first() {
        Some(v) => match &v.value {
            Scalar::String(s) => Some(Str {
                value: s.clone(),
                span: v.span,
            }),
            _ => None,
        },
        None => None,
    }
}
