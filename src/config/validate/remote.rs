//! Where a team shares its work on object storage: `state { s3 ...; lease-ttl "60s"; }`
//! and `provider "local" { store { s3 ... } }`. Both name the place with the same `s3`
//! node, checked here once into an [`S3Location`].

use std::time::Duration;

use super::{Str, V};
use crate::config::model::{S3Location, SharedState};
use crate::config::raw::Node;

const S3_USAGE: &str = "s3 bucket=\"acme-imgraph\" prefix=\"platform/\" region=\"eu-west-1\"";
const LEASE_TTL_USAGE: &str = "lease-ttl \"60s\"";
/// How long a lease lives without a heartbeat when `lease-ttl` is not given.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);

impl V<'_> {
    /// The `s3` and `lease-ttl` children of a `state { ... }` block.
    pub(super) fn shared_state(&mut self, node: &Node) -> Option<SharedState> {
        let place = "in `state`";
        let kids = self.children(node, &["s3", "lease-ttl"], place);
        let lease_ttl = match self.single(&kids, "lease-ttl", place) {
            Some(n) => self.duration(n, LEASE_TTL_USAGE),
            None => Some(DEFAULT_LEASE_TTL),
        };
        let Some(s3) = self.single(&kids, "s3", place) else {
            self.missing_child(
                node,
                "`state { ... }`",
                "s3",
                format!("name the shared state's place, e.g. `state {{ {S3_USAGE}; }}`"),
            );
            return None;
        };
        let location = self.s3_location(s3);
        Some(SharedState {
            location: location?,
            lease_ttl: lease_ttl?,
        })
    }

    /// `store ".imgraph/images"`, `store { s3 ... }` or both: the store folder as written
    /// (if any) and the shared place (if any).
    pub(super) fn local_store(&mut self, node: &Node) -> (Option<Str>, Option<S3Location>) {
        let usage = "store \".imgraph/images\"";
        if node.children().is_empty() {
            return (self.leaf(node, "a folder", usage), None);
        }
        self.props(node, &[]);
        let folder = if node.args.is_empty() {
            None
        } else {
            self.arg(node, "a folder", usage)
        };
        let place = "in `store`";
        let kids = self.children(node, &["s3"], place);
        let location = match self.single(&kids, "s3", place) {
            Some(s3) => self.s3_location(s3),
            None => {
                self.missing_child(
                    node,
                    "`store { ... }`",
                    "s3",
                    format!("name where the artifacts are shared, e.g. `store {{ {S3_USAGE}; }}`"),
                );
                None
            }
        };
        (folder, location)
    }

    /// `s3 bucket=... prefix=... region=... endpoint=...` (prefix and endpoint optional).
    pub(super) fn s3_location(&mut self, node: &Node) -> Option<S3Location> {
        self.props(node, &["bucket", "prefix", "region", "endpoint"]);
        self.no_children(node);
        let _ = self.args(node, &[], S3_USAGE);
        let bucket = self.required_prop(node, "bucket", S3_USAGE);
        let region = self.required_prop(node, "region", S3_USAGE);
        let prefix = self.prop_str(node, "prefix", S3_USAGE);
        let endpoint = self.prop_str(node, "endpoint", S3_USAGE);

        let bucket = bucket.and_then(|b| self.bucket_name(b));
        let region = region.and_then(|r| self.region_name(r));
        // Each value is checked even when another is wrong, so every error shows at once.
        let prefix = match prefix {
            Some(p) => self.key_prefix(p),
            None => Some(String::new()),
        };
        let endpoint = match endpoint {
            Some(e) => self
                .endpoint_value(e, "endpoint=\"http://127.0.0.1:9000\"")
                .map(Some),
            None => Some(None),
        };
        Some(S3Location {
            bucket: bucket?,
            prefix: prefix?,
            region: region?,
            endpoint: endpoint?,
        })
    }

    /// S3's bucket naming rules: 3 to 63 lowercase letters, digits, dots and hyphens,
    /// beginning and ending with a letter or digit.
    fn bucket_name(&mut self, b: Str) -> Option<String> {
        let chars_ok = b
            .value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
        let ends_ok = b
            .value
            .chars()
            .next()
            .zip(b.value.chars().last())
            .is_some_and(|(f, l)| f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric());
        if (3..=63).contains(&b.value.len()) && chars_ok && ends_ok {
            return Some(b.value);
        }
        self.diags
            .error(
                "bad_value",
                b.span,
                format!("`{}` is not a valid bucket name", b.value),
                "not a bucket name",
            )
            .help("a bucket name has 3 to 63 lowercase letters, digits, dots or hyphens, and begins and ends with a letter or digit");
        None
    }

    fn region_name(&mut self, r: Str) -> Option<String> {
        let ok = !r.value.is_empty()
            && r.value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            return Some(r.value);
        }
        self.diags
            .error(
                "bad_value",
                r.span,
                format!("`{}` is not a region name", r.value),
                "not a region",
            )
            .help("write a region like `region=\"eu-west-1\"` (an S3-compatible server takes any, e.g. `us-east-1`)");
        None
    }

    /// A key prefix, stored without leading or trailing `/`; empty, `.` and `..` segments
    /// are refused (they name no place in a bucket, or a different one than they read).
    fn key_prefix(&mut self, p: Str) -> Option<String> {
        let trimmed = p.value.trim_matches('/');
        let bad = trimmed.split('/').find(|seg| {
            !trimmed.is_empty()
                && (seg.is_empty()
                    || *seg == "."
                    || *seg == ".."
                    || seg.chars().any(|c| c.is_control()))
        });
        let Some(bad) = bad else {
            return Some(trimmed.to_owned());
        };
        let what = if bad.is_empty() {
            "an empty segment".to_owned()
        } else {
            format!("the segment `{}`", bad.escape_debug())
        };
        self.diags
            .error(
                "bad_value",
                p.span,
                format!("prefix `{}` has {what}", p.value.escape_debug()),
                "not a key prefix",
            )
            .help("write the prefix as folder names joined by `/`, like `prefix=\"platform/\"`");
        None
    }
}
