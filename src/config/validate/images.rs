//! `image` stanzas: the image's own children, and the check that no image is built from
//! itself. Builds, inputs and tests have files of their own.

use std::collections::{BTreeMap, HashMap};

use miette::SourceSpan;

use super::{ImageDraft, NameKind, Str, V};
use crate::config::diag::did_you_mean;
use crate::config::model::{FromRef, Image, InstanceSettings};
use crate::config::raw::Node;

const IMAGE_CHILDREN: &[&str] = &[
    "provider", "from", "version", "max-age", "build", "input", "packages", "probe", "test",
    "tags", "instance", "env", "pass-env", "retain",
];
const DEFAULT_VERSION: &str = "1.0";

impl V<'_> {
    pub(super) fn image(&mut self, node: &Node) -> ImageDraft {
        self.props(node, &[]);
        let name = self.arg(node, "a name", "image \"NAME\" { ... }");
        let owner = match &name {
            Some(n) => format!("image `{}`", n.value),
            None => "this image".to_owned(),
        };
        let place = format!("in {owner}");
        let kids = self.children(node, IMAGE_CHILDREN, &place);

        let from = match self.single(&kids, "from", &place) {
            Some(n) => self.from(n),
            None => {
                self.missing_child(
                    node,
                    &owner,
                    "from",
                    "add `from \"NAME\"` with the source or image it is built from".to_owned(),
                );
                None
            }
        };
        let version = match self.single(&kids, "version", &place) {
            Some(n) => self.version(n),
            None => Some(DEFAULT_VERSION.to_owned()),
        };
        let max_age = match self.single(&kids, "max-age", &place) {
            Some(n) => self.duration(n, "max-age \"7d\""),
            None => None,
        };
        let retain = match self.single(&kids, "retain", &place) {
            Some(n) => self.retain(n),
            None => None,
        };
        let build = match self.single(&kids, "build", &place) {
            Some(n) => self.build(n),
            None => {
                self.missing_child(
                    node,
                    &owner,
                    "build",
                    "add a build: `build \"rootfs\" { ... }`, `build \"packer\" template=\"FILE\"` or `build \"ec2\" { ... }`".to_owned(),
                );
                None
            }
        };
        let provider = self.image_provider(
            &kids,
            &place,
            &owner,
            build.as_ref().map(|b| (&b.build, &b.builder)),
        );
        let env = self.env_names(&kids, &place);

        let mut inputs = Vec::new();
        let mut tests = Vec::new();
        let mut test_names = HashMap::new();
        let mut probe_names = HashMap::new();
        for kid in &kids {
            match kid.name.as_str() {
                "input" => inputs.extend(self.input(kid)),
                "packages" => inputs.extend(self.packages(kid)),
                "probe" => inputs.extend(self.probe(kid, &mut probe_names, &place)),
                "test" => {
                    if let Some(t) = self.test(kid, &mut test_names, &place) {
                        tests.push(t);
                    }
                }
                _ => {}
            }
        }
        let tags = match self.single(&kids, "tags", &place) {
            Some(n) => self.tags(n, &owner),
            None => BTreeMap::new(),
        };
        let instance = match self.single(&kids, "instance", &place) {
            Some(n) => self.instance(n),
            None => InstanceSettings::default(),
        };

        let from_image = match &from {
            Some((FromRef::Image(upstream), span)) => Some(Str {
                value: upstream.clone(),
                span: *span,
            }),
            _ => None,
        };
        let image = match (&name, from, version, build, provider) {
            (Some(name), Some((from, _)), Some(version), Some(build), Some(provider)) => {
                Some(Image {
                    name: name.value.clone(),
                    provider,
                    from,
                    version,
                    max_age,
                    retain,
                    build: build.build,
                    build_network: build.network,
                    build_env: build.env,
                    env,
                    inputs,
                    tests,
                    tags,
                    instance,
                    span: name.span,
                })
            }
            _ => None,
        };
        ImageDraft {
            name,
            from_image,
            image,
        }
    }

    pub(super) fn from(&mut self, node: &Node) -> Option<(FromRef, SourceSpan)> {
        let s = self.leaf(node, "the name of a source or image", "from \"debian-12\"")?;
        match self.names.get(&s.value) {
            Some((NameKind::Source, _)) => Some((FromRef::Source(s.value), s.span)),
            Some((NameKind::Image, _)) => Some((FromRef::Image(s.value), s.span)),
            None => {
                let help = match did_you_mean(&s.value, self.names_of(None)) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!(
                        "declare it with `source \"{0}\" {{ ... }}` or `image \"{0}\" {{ ... }}`",
                        s.value
                    ),
                };
                self.diags
                    .error(
                        "unknown_reference",
                        s.span,
                        format!("unknown source or image `{}`", s.value),
                        "no source or image has this name",
                    )
                    .help(help);
                None
            }
        }
    }

    pub(super) fn version(&mut self, node: &Node) -> Option<String> {
        let usage = "version \"1.4\"";
        let s = self.leaf_as(node, "a version", usage, "a string like \"1.4\"")?;
        let valid = s.value.split_once('.').is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
        if !valid {
            self.diags
                .error(
                    "bad_version",
                    s.span,
                    format!("invalid version `{}`", s.value),
                    "not MAJOR.MINOR",
                )
                .help("a version is MAJOR.MINOR, like \"1.4\"; each build adds the patch number (1.4.0, 1.4.1, ...)");
            return None;
        }
        Some(s.value)
    }

    pub(super) fn tags(&mut self, node: &Node, owner: &str) -> BTreeMap<String, String> {
        self.props(node, &[]);
        let _ = self.args(node, &[], "tags { Team \"platform\"; }");
        let mut tags = BTreeMap::new();
        let mut seen = HashMap::new();
        for kid in node.children() {
            let usage = format!("{} \"VALUE\"", kid.name);
            let Some(value) = self.leaf(kid, "a value", &usage) else {
                continue;
            };
            let key = Str {
                value: kid.name.clone(),
                span: kid.name_span,
            };
            if key.value.starts_with("imgraph:") {
                self.diags
                    .error(
                        "reserved_tag",
                        key.span,
                        format!("tag `{}` is reserved", key.value),
                        "reserved prefix",
                    )
                    .help("imgraph sets the `imgraph:` tags itself (image, version, key); pick another key");
                continue;
            }
            if self.unique(
                &mut seen,
                &key,
                format!("tag `{}` is given twice on {owner}", key.value),
                "give each tag once",
            ) {
                tags.insert(key.value, value.value);
            }
        }
        tags
    }

    pub(super) fn instance(&mut self, node: &Node) -> InstanceSettings {
        self.props(node, &[]);
        let _ = self.args(node, &[], "instance { type \"t3.small\"; }");
        let place = "in `instance`";
        let kids = self.children(
            node,
            &["type", "subnet", "security-group", "key-name", "profile"],
            place,
        );
        let one = |v: &mut Self, key: &str, usage: &str| {
            let n = v.single(&kids, key, place)?;
            v.leaf(n, "a value", usage).map(|s| s.value)
        };
        let instance_type = one(self, "type", "type \"t3.small\"");
        let subnet = one(self, "subnet", "subnet \"subnet-0123\"");
        let key_name = one(self, "key-name", "key-name \"NAME\"");
        let instance_profile = one(self, "profile", "profile \"NAME\"");
        let security_groups = kids
            .iter()
            .filter(|k| k.name == "security-group")
            .filter_map(|k| self.leaf(k, "a group id", "security-group \"sg-0123\""))
            .map(|s| s.value)
            .collect();
        InstanceSettings {
            instance_type,
            subnet,
            security_groups,
            key_name,
            instance_profile,
        }
    }

    /// Images whose `from` chains loop back to themselves.
    pub(super) fn image_cycles(&mut self, drafts: &[ImageDraft]) {
        // Only first definitions take part, as they are what names resolve to.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut names = Vec::new();
        for d in drafts {
            if let Some(n) = &d.name {
                if self
                    .names
                    .get(&n.value)
                    .is_some_and(|(_, span)| *span == n.span)
                {
                    index.insert(n.value.as_str(), names.len());
                    names.push(n.value.as_str());
                }
            }
        }
        let mut edges = Vec::new();
        for d in drafts {
            if let (Some(n), Some(from)) = (&d.name, &d.from_image) {
                if let (Some(&a), Some(&b)) =
                    (index.get(n.value.as_str()), index.get(from.value.as_str()))
                {
                    edges.push((a, b, from.span));
                }
            }
        }
        self.report_cycles(
            &names,
            &edges,
            "images",
            "is built from",
            "an image cannot be built from itself, even through other images; one of them must start `from` a source",
        );
    }
}
