//! What is hashed into a node's key: `input`, `packages` and `probe`, and `test` suites
//! (which carry inputs of their own).

use std::collections::HashMap;
use std::time::Duration;

use miette::SourceSpan;

use super::{ENV_NODES, V};
use crate::config::model::{Input, InputKind, Network, ProbePlace, TestSuite, Trigger};
use crate::config::paths::Expect;
use crate::config::raw::Node;

const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(600);

impl V<'_> {
    pub(super) fn input(&mut self, node: &Node) -> Option<Input> {
        let usage = "input \"scripts/*.sh\" trigger=\"immediate\" exclude=\"*.tmp\"";
        self.props(node, &["trigger", "exclude"]);
        let kids = self.children(node, &["exclude"], "in `input`");
        let trigger = self.trigger(node, Trigger::Immediate, usage);
        let mut exclude = Vec::new();
        if let Some(s) = self.prop_str(node, "exclude", usage) {
            exclude.extend(self.paths.exclude(self.diags, &s.value, s.span));
        }
        for kid in kids {
            if let Some(s) = self.leaf(kid, "a glob", "exclude \"*.tmp\"") {
                exclude.extend(self.paths.exclude(self.diags, &s.value, s.span));
            }
        }
        let raw = self.arg(node, "a path or glob", usage)?;
        let pattern = self.paths.input(self.diags, &raw.value, raw.span)?;
        if !self.not_own(&pattern, &raw, "input") {
            return None;
        }
        let pattern = if pattern.is_empty() {
            ".".to_owned()
        } else {
            pattern
        };
        Some(Input {
            kind: InputKind::Path { pattern },
            trigger,
            exclude,
            span: node.head_span,
        })
    }

    pub(super) fn packages(&mut self, node: &Node) -> Option<Input> {
        let usage = "packages \"packages/base.txt\" trigger=\"rollup\"";
        self.props(node, &["trigger"]);
        self.no_children(node);
        let trigger = self.trigger(node, Trigger::Rollup, usage);
        let raw = self.arg(node, "a package list file", usage)?;
        let path = self.paths.existing(
            self.diags,
            &raw.value,
            raw.span,
            "package list",
            Expect::File,
        )?;
        if !self.not_own(path.as_str(), &raw, "package list") {
            return None;
        }
        Some(Input {
            kind: InputKind::Packages { path },
            trigger,
            exclude: Vec::new(),
            span: node.head_span,
        })
    }

    pub(super) fn probe(
        &mut self,
        node: &Node,
        seen: &mut HashMap<String, SourceSpan>,
        place: &str,
    ) -> Option<Input> {
        let usage = "probe \"apt-index\" run=\"./scripts/apt-versions.sh\"";
        self.props(node, &["run", "trigger", "in", "network", "timeout"]);
        let probe_place = "in a probe";
        let kids = self.children(node, &ENV_NODES, probe_place);
        let env = self.env_names(&kids, probe_place);
        let trigger = self.trigger(node, Trigger::Rollup, usage);
        let place_in = match self.prop_str(node, "in", usage) {
            Some(s) => self
                .choice(&s, "unknown_value", "probe place")
                .unwrap_or(ProbePlace::Project),
            None => ProbePlace::Project,
        };
        let network = self
            .prop_str(node, "network", usage)
            .and_then(|s| self.network_value(&s))
            .unwrap_or(Network::None);
        let timeout = self
            .prop_str(node, "timeout", usage)
            .and_then(|s| self.duration_value(&s, "timeout"));
        let name = self.arg(node, "a name", usage);
        let command = self
            .required_prop(node, "run", usage)
            .and_then(|s| self.nonempty_command(&s));
        let name = name?;
        if !self.unique(
            seen,
            &name,
            format!("probe `{}` is defined twice {place}", name.value),
            "each probe of an image needs its own name; rename one",
        ) {
            return None;
        }
        Some(Input {
            kind: InputKind::Probe {
                name: name.value,
                command: command?,
                place: place_in,
                network,
                timeout,
                env,
            },
            trigger,
            exclude: Vec::new(),
            span: node.head_span,
        })
    }

    pub(super) fn test(
        &mut self,
        node: &Node,
        seen: &mut HashMap<String, SourceSpan>,
        image_place: &str,
    ) -> Option<TestSuite> {
        self.props(node, &[]);
        let name = self.arg(
            node,
            "a name",
            "test \"smoke\" { run \"sh tests/smoke/check.sh\" }",
        );
        let owner = match &name {
            Some(n) => format!("test `{}`", n.value),
            None => "this test".to_owned(),
        };
        let place = format!("in {owner}");
        let kids = self.children(
            node,
            &["input", "run", "timeout", "network", "env", "pass-env"],
            &place,
        );
        let network = self.network_child(&kids, &place, Network::None);
        let env = self.env_names(&kids, &place);
        let command = match self.single(&kids, "run", &place) {
            Some(n) => self.command(n, "run \"sh tests/smoke/check.sh\""),
            None => {
                self.missing_child(
                    node,
                    &owner,
                    "run",
                    "add `run \"COMMAND\"`: the command that checks a fresh instance of the image"
                        .to_owned(),
                );
                None
            }
        };
        let timeout = match self.single(&kids, "timeout", &place) {
            Some(n) => self.duration(n, "timeout \"10m\""),
            None => Some(DEFAULT_TEST_TIMEOUT),
        };
        let inputs: Vec<Input> = kids
            .iter()
            .filter(|k| k.name == "input")
            .filter_map(|k| self.input(k))
            .collect();
        let name = name?;
        if !self.unique(
            seen,
            &name,
            format!("test `{}` is defined twice {image_place}", name.value),
            "each test of an image needs its own name; rename one",
        ) {
            return None;
        }
        Some(TestSuite {
            name: name.value,
            inputs,
            command: command?,
            timeout: timeout?,
            network,
            env,
            span: name.span,
        })
    }
}
