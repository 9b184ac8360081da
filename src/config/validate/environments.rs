//! `environment` stanzas: deliveries, `after` order and its cycles, and the check that an
//! environment only receives images the ones before it received first.

use std::collections::HashMap;

use super::{EnvDraft, NameKind, Str, V};
use crate::config::diag::suggestion;
use crate::config::model::{Delivery, Environment, Input};
use crate::config::raw::Node;

impl V<'_> {
    pub(super) fn environment(&mut self, node: &Node) -> EnvDraft {
        self.props(node, &[]);
        let name = self.arg(
            node,
            "a name",
            "environment \"NAME\" { deliver \"IMAGE\" { run \"CMD\" } }",
        );
        let owner = match &name {
            Some(n) => format!("environment `{}`", n.value),
            None => "this environment".to_owned(),
        };
        let place = format!("in {owner}");
        let kids = self.children(node, &["after", "deliver"], &place);
        let mut after = Vec::new();
        let mut seen_after = HashMap::new();
        let mut deliveries = Vec::new();
        let mut delivered = Vec::new();
        let mut seen_deliveries = HashMap::new();
        for kid in kids {
            if kid.name == "after" {
                let Some(s) = self.leaf(kid, "an environment name", "after \"staging\"") else {
                    continue;
                };
                if !self.environments.contains_key(&s.value) {
                    let names: Vec<&str> =
                        self.environment_order.iter().map(String::as_str).collect();
                    let help = suggestion(&s.value, &names, "environments in this file are")
                        .unwrap_or_else(|| {
                            "declare it with `environment \"NAME\" { ... }`".to_owned()
                        });
                    self.diags
                        .error(
                            "unknown_reference",
                            s.span,
                            format!("unknown environment `{}`", s.value),
                            "no environment has this name",
                        )
                        .help(help);
                    continue;
                }
                if self.unique(
                    &mut seen_after,
                    &s,
                    format!("`after \"{}\"` is given twice {place}", s.value),
                    "remove one of them",
                ) {
                    after.push(s);
                }
                continue;
            }
            let Some((image, delivery)) = self.delivery(kid) else {
                continue;
            };
            if self.unique(
                &mut seen_deliveries,
                &image,
                format!("image `{}` is delivered twice {place}", image.value),
                "deliver each image once per environment; put both commands in one `run`",
            ) {
                delivered.push(image);
                deliveries.extend(delivery);
            }
        }
        let environment = name.as_ref().map(|n| Environment {
            name: n.value.clone(),
            after: after.iter().map(|s| s.value.clone()).collect(),
            deliveries,
            span: n.span,
        });
        EnvDraft {
            name,
            after,
            deliveries: delivered,
            environment,
        }
    }

    /// The image named (when it exists) and the delivery (when it is complete).
    pub(super) fn delivery(&mut self, node: &Node) -> Option<(Str, Option<Delivery>)> {
        let usage = "deliver \"web\" { run \"./deliver.sh\" }";
        self.props(node, &[]);
        let image = self.arg(node, "an image name", usage);
        let place = match &image {
            Some(i) => format!("in the delivery of `{}`", i.value),
            None => "in this delivery".to_owned(),
        };
        let kids = self.children(node, &["run", "input", "env", "pass-env"], &place);
        let env = self.env_names(&kids, &place);
        let inputs: Vec<Input> = kids
            .iter()
            .filter(|k| k.name == "input")
            .filter_map(|k| self.input(k))
            .collect();
        let command = match self.single(&kids, "run", &place) {
            Some(n) => self.command(n, "run \"./deliver.sh\""),
            None => {
                let owner = match &image {
                    Some(i) => format!("the delivery of `{}`", i.value),
                    None => "this delivery".to_owned(),
                };
                self.missing_child(
                    node,
                    &owner,
                    "run",
                    "add `run \"COMMAND\"`: the command that rolls the new image out".to_owned(),
                );
                None
            }
        };
        let image = image?;
        match self.names.get(&image.value) {
            Some((NameKind::Image, _)) => {}
            Some((NameKind::Source, _)) => {
                self.diags
                    .error(
                        "unknown_reference",
                        image.span,
                        format!("`{}` is a source, not an image", image.value),
                        "a source",
                    )
                    .help("environments receive images this project builds; sources are only built from");
                return None;
            }
            None => {
                let images = self.names_of(Some(NameKind::Image));
                let help = suggestion(&image.value, &images, "images in this file are")
                    .unwrap_or_else(|| "this file declares no image".to_owned());
                self.diags
                    .error(
                        "unknown_reference",
                        image.span,
                        format!("unknown image `{}`", image.value),
                        "no image has this name",
                    )
                    .help(help);
                return None;
            }
        }
        let delivery = command.map(|command| Delivery {
            image: image.value.clone(),
            command,
            inputs,
            env,
            span: image.span,
        });
        Some((image, delivery))
    }

    pub(super) fn environment_cycles(&mut self, envs: &[EnvDraft]) {
        let order = self.environment_order.clone();
        let names: Vec<&str> = order.iter().map(String::as_str).collect();
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut edges = Vec::new();
        for env in envs {
            let Some(name) = &env.name else { continue };
            // A second definition of a name does not take part (it is already reported).
            if self.environments.get(&name.value) != Some(&name.span) {
                continue;
            }
            let Some(&a) = index.get(name.value.as_str()) else {
                continue;
            };
            for after in &env.after {
                if let Some(&b) = index.get(after.value.as_str()) {
                    edges.push((a, b, after.span));
                }
            }
        }
        self.report_cycles(
            &names,
            &edges,
            "environments",
            "comes after",
            "`after` orders deliveries between environments; remove one `after` to break the cycle",
        );
    }

    /// An environment that comes after another may only receive images the other receives
    /// first.
    pub(super) fn delivery_order(&mut self, envs: &[EnvDraft]) {
        let firsts: Vec<&EnvDraft> = envs
            .iter()
            .filter(|e| {
                e.name
                    .as_ref()
                    .is_some_and(|n| self.environments.get(&n.value) == Some(&n.span))
            })
            .collect();
        let by_name: HashMap<&str, &EnvDraft> = firsts
            .iter()
            .filter_map(|e| e.name.as_ref().map(|n| (n.value.as_str(), *e)))
            .collect();
        for env in &firsts {
            let Some(name) = &env.name else { continue };
            for after in &env.after {
                let Some(earlier) = by_name.get(after.value.as_str()) else {
                    continue;
                };
                if earlier.name.as_ref().is_some_and(|n| n.value == name.value) {
                    continue; // a self-`after` is reported as a cycle
                }
                for image in &env.deliveries {
                    if earlier.deliveries.iter().any(|d| d.value == image.value) {
                        continue;
                    }
                    self.diags
                        .error(
                            "delivery_order",
                            image.span,
                            format!(
                                "{} delivers {} after {}, but {} does not deliver {}",
                                name.value, image.value, after.value, after.value, image.value
                            ),
                            format!("`{}` delivered here", image.value),
                        )
                        .label(after.span, format!("`{}` comes first", after.value))
                        .help(format!(
                            "add `deliver \"{}\" {{ run \"...\" }}` to environment `{}`, or remove `after \"{}\"`",
                            image.value, after.value, after.value
                        ));
                }
            }
        }
    }
}
