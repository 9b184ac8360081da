//! `source` stanzas: a local tarball or folder, an AWS image filter, or another imgraph
//! project's image (read from its shared state).

use std::collections::{BTreeMap, HashMap};

use super::{ImageDraft, V};
use crate::config::model::{FromRef, Source, SourceKind};
use crate::config::paths::Expect;
use crate::config::raw::Node;

const SOURCE_ARCHIVES: &[&str] = &[".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst"];

impl V<'_> {
    pub(super) fn source(&mut self, node: &Node) -> Option<Source> {
        self.props(node, &[]);
        let name = self.arg(node, "a name", "source \"NAME\" { local \"PATH\" }");
        let owner = match &name {
            Some(n) => format!("source `{}`", n.value),
            None => "this source".to_owned(),
        };
        let place = format!("in {owner}");
        let kids = self.children(node, &["local", "aws", "imgraph"], &place);
        let (origin, extra) = match kids.as_slice() {
            [] => {
                self.missing_child(
                    node,
                    &owner,
                    "local`, `aws` or `imgraph",
                    "add `local \"bases/debian-12.tar.zst\"` (a tarball or folder in the project), `aws owner=\"amazon\" name=\"PATTERN\"` or `imgraph image=\"NAME\" { s3 … }`".to_owned(),
                );
                return None;
            }
            [origin, extra @ ..] => (*origin, extra),
        };
        if let Some(second) = extra.first() {
            self.diags
                .error(
                    "duplicate_node",
                    second.name_span,
                    format!("{owner} has more than one origin"),
                    "second origin",
                )
                .label(origin.name_span, "first origin")
                .help(
                    "a source is one `local` path, one `aws` image filter or one `imgraph` image",
                );
        }
        let kind = match origin.name.as_str() {
            "local" => self.local_source(origin),
            "imgraph" => self.imgraph_source(origin, &owner),
            _ => self.aws_source(origin, &owner),
        }?;
        let name = name?;
        Some(Source {
            name: name.value,
            kind,
            span: name.span,
        })
    }

    pub(super) fn local_source(&mut self, node: &Node) -> Option<SourceKind> {
        let s = self.leaf(
            node,
            "a tarball or folder",
            "local \"bases/debian-12.tar.zst\"",
        )?;
        let path = self.paths.existing(
            self.diags,
            &s.value,
            s.span,
            "source image",
            Expect::FileOrDir,
        )?;
        let is_dir = self.paths.root.join(path.as_str()).is_dir();
        if !is_dir
            && !SOURCE_ARCHIVES
                .iter()
                .any(|ext| path.as_str().ends_with(ext))
        {
            self.diags
                .error(
                    "source_format",
                    s.span,
                    format!("source image `{}` is not a tar archive or a folder", s.value),
                    "unsupported format",
                )
                .help("a local source is a .tar, .tar.gz, .tgz or .tar.zst file, or a folder holding a root file system");
            return None;
        }
        Some(SourceKind::Local { path })
    }

    pub(super) fn aws_source(&mut self, node: &Node, owner: &str) -> Option<SourceKind> {
        let usage = "aws owner=\"amazon\" name=\"amzn2-ami-hvm-*\"";
        self.props(node, &["owner", "name"]);
        let _ = self.args(node, &[], usage);
        let kids = self.children(
            node,
            &["owner", "tag"],
            &format!("in the aws filter of {owner}"),
        );
        let mut owners = Vec::new();
        owners.extend(self.prop_str(node, "owner", usage).map(|s| s.value));
        let name = self.prop_str(node, "name", usage).map(|s| s.value);
        let mut tags = BTreeMap::new();
        let mut seen = HashMap::new();
        for kid in kids {
            if kid.name == "owner" {
                owners.extend(
                    self.leaf(kid, "an account id or alias", "owner \"amazon\"")
                        .map(|s| s.value),
                );
                continue;
            }
            let Some((key, value)) =
                self.pair(kid, ["a tag key", "a value"], "tag \"KEY\" \"VALUE\"")
            else {
                continue;
            };
            if self.unique(
                &mut seen,
                &key,
                format!("tag filter `{}` is given twice in {owner}", key.value),
                "give each tag key once",
            ) {
                tags.insert(key.value, value);
            }
        }
        let has_owner_node =
            node.prop("owner").is_some() || node.children().iter().any(|k| k.name == "owner");
        if !has_owner_node {
            self.diags
                .error(
                    "missing_property",
                    node.head_span,
                    format!("the aws filter of {owner} names no owner"),
                    "needs `owner=...`",
                )
                .help("write it as `aws owner=\"amazon\" name=\"PATTERN\"`; `owner=\"self\"` means your own account, more owners go in `owner \"ID\"` children");
            return None;
        }
        Some(SourceKind::Aws { owners, name, tags })
    }
}

const IMGRAPH_USAGE: &str =
    "imgraph image=\"base\" { s3 bucket=\"acme-imgraph\" prefix=\"platform/\" region=\"eu-west-1\"; }";

impl V<'_> {
    /// `imgraph image="NAME" { s3 … }`: the image's name in the other project and where
    /// that project's shared state is.
    pub(super) fn imgraph_source(&mut self, node: &Node, owner: &str) -> Option<SourceKind> {
        self.props(node, &["image"]);
        let _ = self.args(node, &[], IMGRAPH_USAGE);
        let image = self.required_prop(node, "image", IMGRAPH_USAGE);
        let place = format!("in the imgraph source of {owner}");
        let kids = self.children(node, &["s3"], &place);
        let state = match self.single(&kids, "s3", &place) {
            Some(s3) => self.s3_location(s3),
            None => {
                self.missing_child(
                    node,
                    &format!("the imgraph source of {owner}"),
                    "s3",
                    format!(
                        "name where the other project's shared state is (its `state {{ s3 … }}`), e.g. `{IMGRAPH_USAGE}`"
                    ),
                );
                None
            }
        };
        Some(SourceKind::Imgraph {
            image: image?.value,
            state: state?,
        })
    }
}

impl V<'_> {
    /// An `imgraph` source is another project's local artifact (`local:<hex>`): only the
    /// local provider can build from it.
    pub(super) fn imgraph_sources_build_locally(
        &mut self,
        sources: &[Source],
        drafts: &[ImageDraft],
    ) {
        for image in drafts.iter().filter_map(|d| d.image.as_ref()) {
            let FromRef::Source(name) = &image.from else {
                continue;
            };
            let Some(source) = sources.iter().find(|s| s.name == *name) else {
                continue;
            };
            if matches!(source.kind, SourceKind::Imgraph { .. }) && image.provider != "local" {
                self.diags
                    .error(
                        "provider_mismatch",
                        image.span,
                        format!(
                            "image `{}` is built from `{name}`, another project's local image, with the {} provider",
                            image.name, image.provider
                        ),
                        "needs the local provider",
                    )
                    .label(source.span, "another project's local image")
                    .help("an `imgraph` source is a root file system from another project's local store: build from it with `provider \"local\"` and a `rootfs` build");
            }
        }
    }
}
