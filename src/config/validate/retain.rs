//! `retain { keep 5; keep-days 30; }`, in an image or at the top level (the default of
//! every image without its own): how many versions `imgraph gc` keeps.

use super::V;
use crate::config::model::Retain;
use crate::config::raw::{Node, Scalar};

const RETAIN_CHILDREN: &[&str] = &["keep", "keep-days"];
const USAGE: &str = "retain { keep 5; keep-days 30; }";

impl V<'_> {
    pub(super) fn retain(&mut self, node: &Node) -> Option<Retain> {
        self.props(node, &[]);
        let _ = self.args(node, &[], USAGE);
        let kids = self.children(node, RETAIN_CHILDREN, "in `retain`");
        let keep = self
            .single(&kids, "keep", "in `retain`")
            .and_then(|n| self.count_arg(n, "keep 5"));
        let keep_days = self
            .single(&kids, "keep-days", "in `retain`")
            .and_then(|n| self.count_arg(n, "keep-days 30"));
        if keep.is_none() && keep_days.is_none() {
            if kids.is_empty() {
                self.diags
                    .error(
                        "missing_node",
                        node.head_span,
                        "`retain` keeps nothing: it has neither `keep` nor `keep-days`",
                        "needs `keep` or `keep-days`",
                    )
                    .help(format!("write it as `{USAGE}`"));
            }
            return None;
        }
        Some(Retain { keep, keep_days })
    }

    /// The one whole-number argument (1 or more) of `keep` / `keep-days`.
    fn count_arg(&mut self, node: &Node, usage: &str) -> Option<u32> {
        self.props(node, &[]);
        self.no_children(node);
        let arg = match node.args.as_slice() {
            [one] => one,
            _ => {
                self.diags
                    .error(
                        "missing_argument",
                        node.head_span,
                        format!("`{}` takes one number", node.name),
                        "needs one number",
                    )
                    .help(format!("write it as `{usage}`"));
                return None;
            }
        };
        match &arg.value {
            Scalar::Integer(n) if (1..=i128::from(u32::MAX)).contains(n) => u32::try_from(*n).ok(),
            Scalar::Integer(_) => {
                self.diags
                    .error(
                        "bad_number",
                        arg.span,
                        format!("`{}` must be a whole number from 1", node.name),
                        "out of range",
                    )
                    .help(format!("write it as `{usage}`"));
                None
            }
            other => {
                self.diags
                    .error(
                        "wrong_type",
                        arg.span,
                        format!("expected a number, found {}", other.kind()),
                        other.kind(),
                    )
                    .help(format!("write it as `{usage}` (without quotes)"));
                None
            }
        }
    }
}
