//! `source` stanzas: a local tarball or folder, or an AWS image filter.

use std::collections::{BTreeMap, HashMap};

use super::V;
use crate::config::model::{Source, SourceKind};
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
        let kids = self.children(node, &["local", "aws"], &place);
        let (origin, extra) = match kids.as_slice() {
            [] => {
                self.missing_child(
                    node,
                    &owner,
                    "local` or `aws",
                    "add `local \"bases/debian-12.tar.zst\"` (a tarball or folder in the project) or `aws owner=\"amazon\" name=\"PATTERN\"`".to_owned(),
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
                .help("a source is either one `local` path or one `aws` image filter");
        }
        let kind = match origin.name.as_str() {
            "local" => self.local_source(origin),
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
