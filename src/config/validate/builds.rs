//! `build` stanzas (one arm per [`Builder`]), their steps, network and variables.

use std::collections::{BTreeMap, HashMap};

use miette::SourceSpan;

use super::{BuildDraft, Str, ENV_NODES, V};
use crate::config::model::{Build, Builder, EnvNames, Network, Step};
use crate::config::paths::Expect;
use crate::config::raw::Node;

impl V<'_> {
    /// The build, its builder name as written, its network and its variables.
    pub(super) fn build(&mut self, node: &Node) -> Option<BuildDraft> {
        let builder = self.arg(node, "a builder name", "build \"rootfs\" { ... }")?;
        let mut network = Network::Host;
        let env;
        let build = match self.choice(&builder, "unknown_builder", "builder")? {
            Builder::Rootfs => {
                self.props(node, &[]);
                let place = "in a rootfs build";
                let kids =
                    self.children(node, &["copy", "run", "network", "env", "pass-env"], place);
                network = self.network_child(&kids, place, Network::Host);
                env = self.env_names(&kids, place);
                let steps: Vec<&Node> = kids
                    .iter()
                    .copied()
                    .filter(|k| k.name == "copy" || k.name == "run")
                    .collect();
                Build::Rootfs {
                    steps: self.steps(&steps),
                }
            }
            Builder::Packer => {
                let usage = "build \"packer\" template=\"packer/web.pkr.hcl\"";
                self.props(node, &["template"]);
                let place = "in a packer build";
                let all = self.children(node, &["var", "env", "pass-env"], place);
                env = self.env_names(&all, place);
                let kids: Vec<&Node> = all.into_iter().filter(|k| k.name == "var").collect();
                let template = self.required_prop(node, "template", usage);
                let template = template.and_then(|t| {
                    self.paths.existing(
                        self.diags,
                        &t.value,
                        t.span,
                        "packer template",
                        Expect::File,
                    )
                });
                let mut vars = BTreeMap::new();
                let mut seen = HashMap::new();
                for kid in kids {
                    let usage = "var \"instance_type\" \"t3.small\"";
                    let Some((key, value)) = self.pair(kid, ["a variable name", "a value"], usage)
                    else {
                        continue;
                    };
                    if self.unique(
                        &mut seen,
                        &key,
                        format!("packer variable `{}` is given twice", key.value),
                        "give each variable once",
                    ) {
                        vars.insert(key.value, value);
                    }
                }
                Build::Packer {
                    template: template?,
                    vars,
                }
            }
            Builder::Ec2 => {
                self.props(node, &[]);
                let place = "in an ec2 build";
                let all = self.children(node, &["run", "env", "pass-env"], place);
                env = self.env_names(&all, place);
                let kids: Vec<&Node> = all.into_iter().filter(|k| k.name == "run").collect();
                Build::Ec2 {
                    steps: self.steps(&kids),
                }
            }
        };
        Some(BuildDraft {
            build,
            builder,
            network,
            env,
        })
    }

    /// `network "host"` / `network "none"` among `kids`, or `default`.
    pub(super) fn network_child(
        &mut self,
        kids: &[&Node],
        place: &str,
        default: Network,
    ) -> Network {
        let Some(node) = self.single(kids, "network", place) else {
            return default;
        };
        self.leaf(node, "a network mode", "network \"none\"")
            .and_then(|s| self.network_value(&s))
            .unwrap_or(default)
    }

    pub(super) fn network_value(&mut self, s: &Str) -> Option<Network> {
        self.choice(s, "unknown_value", "network mode")
    }

    /// The `env "NAME"` and `pass-env "NAME"` nodes among `kids`.
    pub(super) fn env_names(&mut self, kids: &[&Node], place: &str) -> EnvNames {
        let mut names = EnvNames::default();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for kid in kids.iter().filter(|k| ENV_NODES.contains(&k.name.as_str())) {
            let usage = format!("{} \"APP_FLAVOR\"", kid.name);
            let Some(name) = self.leaf(kid, "a variable name", &usage) else {
                continue;
            };
            let valid = name
                .value
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.diags
                    .error(
                        "bad_env_name",
                        name.span,
                        format!("`{}` is not a variable name", name.value),
                        "not a variable name",
                    )
                    .help("a variable name is letters, digits and `_`, not starting with a digit");
                continue;
            }
            if name.value.starts_with("IMGRAPH_") {
                self.diags
                    .error(
                        "bad_env_name",
                        name.span,
                        format!("`{}` is set by imgraph itself", name.value),
                        "reserved name",
                    )
                    .help(
                        "variables starting with IMGRAPH_ are imgraph's own; choose another name",
                    );
                continue;
            }
            if !self.unique(
                &mut seen,
                &name,
                format!("variable `{}` is named twice {place}", name.value),
                "name each variable once, with `env` (hashed) or `pass-env` (not hashed)",
            ) {
                continue;
            }
            if kid.name == "env" {
                names.hashed.insert(name.value);
            } else {
                names.passed.insert(name.value);
            }
        }
        names
    }

    pub(super) fn steps(&mut self, kids: &[&Node]) -> Vec<Step> {
        let mut steps = Vec::new();
        for kid in kids {
            let step = match kid.name.as_str() {
                "copy" => self.copy(kid),
                _ => self
                    .command(kid, "run \"sh /opt/provision.sh\"")
                    .map(|command| Step::Run { command }),
            };
            steps.extend(step);
        }
        steps
    }

    pub(super) fn copy(&mut self, node: &Node) -> Option<Step> {
        let usage = "copy \"config/common\" to=\"/etc/acme\"";
        self.props(node, &["to"]);
        self.no_children(node);
        let from = self.arg(node, "a project path", usage);
        let to = self.required_prop(node, "to", usage);
        let from = from.and_then(|f| {
            let path = self.paths.existing(
                self.diags,
                &f.value,
                f.span,
                "copy source",
                Expect::FileOrDir,
            )?;
            self.not_own(path.as_str(), &f, "copy source")
                .then_some(path)
        });
        let to = to?;
        if !to.value.starts_with('/') {
            self.diags
                .error(
                    "relative_copy_target",
                    to.span,
                    format!("copy target `{}` is not an absolute path", to.value),
                    "relative path",
                )
                .help(format!(
                    "`to` is a path inside the image; write it as `to=\"/{}\"`",
                    to.value.trim_start_matches("./")
                ));
            return None;
        }
        Some(Step::Copy {
            from: from?,
            to: to.value,
        })
    }
}
