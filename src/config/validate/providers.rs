//! `provider` stanzas, and which provider an image uses: the one it names, else the one
//! its builder needs ([`crate::config::model::Build::provider`]).

use std::collections::HashMap;

use miette::SourceSpan;

use super::keywords::Keyword;
use super::{Str, V};
use crate::config::diag::{quoted_list, suggestion};
use crate::config::model::{Build, ProviderDef, ProviderKind, ProviderType, Sandbox};
use crate::config::raw::{Node, Scalar};

const DEFAULT_STORE: &str = ".imgraph/images";

impl V<'_> {
    pub(super) fn providers(&mut self, top: &[&Node]) -> Vec<ProviderDef> {
        let mut defs: Vec<ProviderDef> = Vec::new();
        let mut seen = HashMap::new();
        for node in top.iter().filter(|n| n.name == "provider") {
            let Some(def) = self.provider(node) else {
                continue;
            };
            let name = Str {
                value: def.name.clone(),
                span: def.span,
            };
            if self.unique(
                &mut seen,
                &name,
                format!("provider `{}` is declared twice", name.value),
                "declare each provider once",
            ) {
                defs.push(def);
            }
        }
        // Every declared provider counts for image checks, even one with errors inside.
        for node in top.iter().filter(|n| n.name == "provider") {
            match node.args.first().map(|a| &a.value) {
                Some(Scalar::String(s)) if ProviderType::from_word(s).is_some() => {
                    if !self.providers.contains(s) {
                        self.providers.push(s.clone());
                    }
                }
                _ => self.providers_unclear = true,
            }
        }
        if top.iter().all(|n| n.name != "provider") {
            self.providers = vec!["local".to_owned()];
            defs.push(ProviderDef {
                name: "local".to_owned(),
                kind: ProviderKind::Local {
                    store: self.paths.root.join(DEFAULT_STORE),
                    sandbox: Sandbox::None,
                },
                shared_store: None,
                span: SourceSpan::new(0.into(), 0),
            });
        }
        defs
    }

    pub(super) fn provider(&mut self, node: &Node) -> Option<ProviderDef> {
        self.props(node, &[]);
        let name = self.arg(node, "a provider name", "provider \"local\" { ... }")?;
        let (kind, shared_store) = match self.choice(&name, "unknown_provider", "provider")? {
            ProviderType::Local => {
                let place = "in provider `local`";
                let kids = self.children(node, &["store", "sandbox"], place);
                let (store, shared_store) = match self.single(&kids, "store", place) {
                    Some(n) => {
                        let (folder, shared) = self.local_store(n);
                        let folder = folder.and_then(|s| {
                            self.paths
                                .maybe_existing(self.diags, &s.value, s.span, "image store")
                        });
                        (folder, shared)
                    }
                    None => (None, None),
                };
                let sandbox = match self.single(&kids, "sandbox", place) {
                    Some(n) => match self.leaf(n, "a sandbox kind", "sandbox \"none\"") {
                        Some(s) if s.value == "chroot" => {
                            self.diags
                                .error(
                                    "unsupported_sandbox",
                                    s.span,
                                    "sandbox `chroot` is not supported: a chroot is not a boundary (a step keeps every capability over the host)",
                                    "not a boundary",
                                )
                                .help("use sandbox \"bwrap\": steps and tests run inside the image without capabilities over the host, seeing only their inputs");
                            Sandbox::None
                        }
                        Some(s) => self
                            .choice(&s, "unknown_value", "sandbox")
                            .unwrap_or(Sandbox::None),
                        None => Sandbox::None,
                    },
                    None => Sandbox::None,
                };
                let kind = ProviderKind::Local {
                    store: self
                        .paths
                        .root
                        .join(store.as_deref().unwrap_or(DEFAULT_STORE)),
                    sandbox,
                };
                (kind, shared_store)
            }
            ProviderType::Aws => {
                let place = "in provider `aws`";
                let kids = self.children(node, &["region", "profile", "endpoint"], place);
                let value = |v: &mut Self, key: &str, usage: &str| {
                    let n = v.single(&kids, key, place)?;
                    v.leaf(n, "a value", usage).map(|s| s.value)
                };
                let region = value(self, "region", "region \"eu-west-1\"");
                let profile = value(self, "profile", "profile \"NAME\"");
                let endpoint = match self.single(&kids, "endpoint", place) {
                    Some(n) => self.endpoint(n),
                    None => None,
                };
                let kind = ProviderKind::Aws {
                    region,
                    profile,
                    endpoint,
                };
                (kind, None)
            }
        };
        Some(ProviderDef {
            name: name.value,
            kind,
            shared_store,
            span: name.span,
        })
    }

    pub(super) fn endpoint(&mut self, node: &Node) -> Option<String> {
        let s = self.leaf(node, "a URL", "endpoint \"http://127.0.0.1:5055\"")?;
        self.endpoint_value(s, "endpoint \"http://127.0.0.1:5055\"")
    }

    /// An endpoint URL: `http://` or `https://` (`usage` shows how to write it).
    pub(super) fn endpoint_value(&mut self, s: Str, usage: &str) -> Option<String> {
        if s.value.starts_with("http://") || s.value.starts_with("https://") {
            return Some(s.value);
        }
        self.diags
            .error(
                "bad_value",
                s.span,
                format!("endpoint `{}` is not an http(s) URL", s.value),
                "not a URL",
            )
            .help(format!("write it as `{usage}`"));
        None
    }

    /// The image's provider: named, or implied by its builder or by there being only one.
    pub(super) fn image_provider(
        &mut self,
        kids: &[&Node],
        place: &str,
        owner: &str,
        build: Option<(&Build, &Str)>,
    ) -> Option<String> {
        let needed = build.map(|(b, s)| (b.provider(), s));
        if let Some(node) = self.single(kids, "provider", place) {
            let s = self.leaf(node, "a provider name", "provider \"local\"")?;
            if !self.providers.contains(&s.value) {
                if !(self.providers_unclear && ProviderType::from_word(&s.value).is_some()) {
                    self.undeclared_provider(&s);
                }
                return None;
            }
            if let Some((needed, builder)) = needed {
                if needed.as_str() != s.value {
                    self.diags
                        .error(
                            "provider_mismatch",
                            builder.span,
                            format!(
                                "builder `{}` needs the `{needed}` provider, but {owner} uses `{}`",
                                builder.value, s.value
                            ),
                            format!("needs `{needed}`"),
                        )
                        .label(s.span, "provider named here")
                        .help(builder_help(needed));
                    return None;
                }
            }
            return Some(s.value);
        }
        // A builder works with one provider only, so naming it would be redundant.
        let (needed, builder) = needed?;
        if self.providers.iter().any(|p| p == needed.as_str()) {
            return Some(needed.as_str().to_owned());
        }
        if self.providers_unclear {
            return None;
        }
        let declared = self.declared_providers();
        self.diags
            .error(
                "provider_mismatch",
                builder.span,
                format!(
                    "builder `{}` needs the `{needed}` provider, which this file does not declare",
                    builder.value
                ),
                format!("needs `{needed}`"),
            )
            .help(format!("{}; declared: {declared}", builder_help(needed)));
        None
    }

    pub(super) fn declared_providers(&self) -> String {
        let declared: Vec<&str> = self.providers.iter().map(String::as_str).collect();
        if declared.is_empty() {
            "none".to_owned()
        } else {
            quoted_list(&declared)
        }
    }

    pub(super) fn undeclared_provider(&mut self, s: &Str) {
        let declared: Vec<&str> = self.providers.iter().map(String::as_str).collect();
        let (message, label, help) = if ProviderType::from_word(&s.value).is_some() {
            (
                format!("provider `{}` is not declared", s.value),
                "not declared",
                format!(
                    "declare it at the top level, e.g. `provider \"{}\" {{ ... }}`; declared: {}",
                    s.value,
                    self.declared_providers()
                ),
            )
        } else {
            (
                format!("unknown provider `{}`", s.value),
                "unknown provider",
                suggestion(&s.value, &declared, "declared providers are")
                    .unwrap_or_else(|| "imgraph has the providers `local` and `aws`".to_owned()),
            )
        };
        self.diags
            .error("unknown_provider", s.span, message, label)
            .help(help);
    }
}

fn builder_help(provider: ProviderType) -> String {
    match provider {
        ProviderType::Local => "`rootfs` builds local images; AMIs are built with `packer` or `ec2`".to_owned(),
        ProviderType::Aws => "`packer` and `ec2` build AMIs on AWS: declare `provider \"aws\" { region \"...\" }`, or build locally with `rootfs`".to_owned(),
    }
}
