//! The parse cache: the raw tree of the config text that last loaded cleanly, kept in
//! `.imgraph/config.cache` at the project root, so a project whose `imgraph.kdl` did not
//! change skips the KDL parser (half the time of a no-change `apply` of a 1,000-image
//! project: the parser costs about 5,600 instructions per byte of config).
//!
//! Only the step that is a pure function of the text is cached: text → [`raw::Node`]
//! tree. Validation, which also looks at the disk (paths, globs, the state folder), runs
//! on every load as before, so a cached tree can never hide a deleted input. The entry is
//! keyed by the blake3 of the text together with this file's [`FORMAT`] and imgraph's
//! version, in the envelope of [`crate::cachefile`] (a checksum of its bytes, written
//! through a rename): a different text, a different imgraph or a damaged file is a miss,
//! and a miss is parsed as if there were no cache.
//!
//! The cache is an optimisation and never an error: a file that cannot be read or written
//! is ignored. It is written only into an existing `.imgraph/` (the folder imgraph already
//! owns: walks skip it, inputs may not name it), never creating one, and only after the
//! whole config validated, so a bad config changes nothing.

use std::path::{Path, PathBuf};

use miette::SourceSpan;

use super::raw::{Node, Prop, Scalar, Value, MAX_DEPTH};
use super::MAX_CONFIG_BYTES;
use crate::cachefile::{self, put_str, put_u64, Reader};

/// Where the entry lives, relative to the project root.
pub const CACHE_FILE: &str = ".imgraph/config.cache";

/// Bump when the encoding below or what `raw` makes of a text changes (`raw::parse`
/// turning the same text into another tree): old entries then miss.
const FORMAT: u32 = 1;

const MAGIC: &[u8; 8] = b"imgraphC";

/// An entry larger than this is not read: a tree is a few times its text at most.
const MAX_ENTRY_BYTES: u64 = 16 * MAX_CONFIG_BYTES;

/// The key of `text`: what an entry must name to be used for it.
fn key(text: &str) -> blake3::Hash {
    cachefile::key(MAGIC, FORMAT, text.as_bytes())
}

fn path(root: &Path) -> PathBuf {
    root.join(CACHE_FILE)
}

/// The cached tree of `text` in the project at `root`, if there is a whole entry for it.
pub(super) fn read(root: &Path, text: &str) -> Option<Vec<Node>> {
    let file = path(root);
    let bytes = match cachefile::read(&file, MAX_ENTRY_BYTES) {
        Ok(bytes) => bytes,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(path = %file.display(), error = %e, "config cache not read");
            }
            return None;
        }
    };
    let nodes = decode_entry(&bytes, &key(text));
    if nodes.is_none() {
        tracing::debug!(path = %file.display(), "config cache is for another text or damaged");
    }
    nodes
}

/// Stores `nodes` as the tree of `text`, when `.imgraph/` exists (best effort).
pub(super) fn write(root: &Path, text: &str, nodes: &[Node]) {
    let file = path(root);
    if !file.parent().is_some_and(Path::is_dir) {
        return;
    }
    let bytes = encode_entry(nodes, &key(text));
    if let Err(e) = cachefile::write(&file, &bytes) {
        tracing::debug!(path = %file.display(), error = %e, "config cache not written");
    }
}

fn encode_entry(nodes: &[Node], key: &blake3::Hash) -> Vec<u8> {
    let mut out = cachefile::begin(MAGIC, key, 0);
    put_nodes(&mut out, nodes);
    cachefile::finish(out)
}

fn decode_entry(bytes: &[u8], key: &blake3::Hash) -> Option<Vec<Node>> {
    let payload = cachefile::open(bytes, MAGIC, key)?;
    let mut p = Reader::new(payload);
    let nodes = nodes(&mut p, 0)?;
    p.is_done().then_some(nodes)
}

fn put_span(out: &mut Vec<u8>, span: SourceSpan) {
    put_u64(out, span.offset() as u64);
    put_u64(out, span.len() as u64);
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match &v.value {
        Scalar::String(s) => {
            out.push(0);
            put_str(out, s);
        }
        Scalar::Integer(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Scalar::Float(f) => {
            out.push(2);
            put_u64(out, f.to_bits());
        }
        Scalar::Bool(b) => out.push(3 + u8::from(*b)),
        Scalar::Null => out.push(5),
    }
    put_span(out, v.span);
}

fn put_nodes(out: &mut Vec<u8>, nodes: &[Node]) {
    put_u64(out, nodes.len() as u64);
    for n in nodes {
        put_str(out, &n.name);
        put_span(out, n.name_span);
        put_span(out, n.head_span);
        put_u64(out, n.args.len() as u64);
        for a in &n.args {
            put_value(out, a);
        }
        put_u64(out, n.props.len() as u64);
        for p in &n.props {
            put_str(out, &p.name);
            put_span(out, p.name_span);
            put_value(out, &p.value);
        }
        match &n.children {
            None => out.push(0),
            Some(children) => {
                out.push(1);
                put_nodes(out, children);
            }
        }
        put_span(out, n.children_span);
    }
}

fn span(r: &mut Reader<'_>) -> Option<SourceSpan> {
    let offset = r.usize()?;
    let len = r.usize()?;
    Some(SourceSpan::new(offset.into(), len))
}

fn value(r: &mut Reader<'_>) -> Option<Value> {
    let value = match r.byte()? {
        0 => Scalar::String(r.string()?),
        1 => Scalar::Integer(r.i128()?),
        2 => Scalar::Float(f64::from_bits(r.u64()?)),
        3 => Scalar::Bool(false),
        4 => Scalar::Bool(true),
        5 => Scalar::Null,
        _ => return None,
    };
    Some(Value {
        value,
        span: span(r)?,
    })
}

fn nodes(r: &mut Reader<'_>, depth: usize) -> Option<Vec<Node>> {
    if depth > MAX_DEPTH {
        return None;
    }
    // A node takes at least 8 (name) + 32 (spans) + 16 (counts) + 1 + 16 bytes.
    let n = r.count(73)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string()?;
        let name_span = span(r)?;
        let head_span = span(r)?;
        let args = (0..r.count(17)?)
            .map(|_| value(r))
            .collect::<Option<Vec<_>>>()?;
        let props = (0..r.count(41)?)
            .map(|_| {
                Some(Prop {
                    name: r.string()?,
                    name_span: span(r)?,
                    value: value(r)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let children = match r.byte()? {
            0 => None,
            1 => Some(nodes(r, depth + 1)?),
            _ => return None,
        };
        out.push(Node {
            name,
            name_span,
            head_span,
            args,
            props,
            children,
            children_span: span(r)?,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::Diags;
    use std::sync::Arc;

    const TEXT: &str = r##"imgraph version=1
provider "local" { store ".imgraph/images"; sandbox "none"; }
source "o" { local "origin"; }
image "a" {
    from "o"
    version "1.4"
    build "rootfs" { copy "files" to="/etc/x"; run #"echo "hi""#; }
    tags { Team "platform"; Count 3; Ratio 0.5; On #true; Off #false; Nothing #null; }
    test "smoke" { }
}
"##;

    fn parsed(text: &str) -> Vec<Node> {
        let mut diags = Diags::new("imgraph.kdl", Arc::new(text.to_owned()));
        let nodes = super::super::raw::parse(text, &mut diags);
        assert!(diags.is_empty(), "{TEXT} must parse");
        nodes.unwrap_or_default()
    }

    #[test]
    fn an_entry_gives_back_the_tree_it_was_made_of() {
        let nodes = parsed(TEXT);
        let k = key(TEXT);
        let decoded = decode_entry(&encode_entry(&nodes, &k), &k);
        assert_eq!(
            decoded.map(|d| format!("{d:?}")),
            Some(format!("{nodes:?}"))
        );
    }

    #[test]
    fn an_entry_is_only_used_for_its_own_text() {
        let nodes = parsed(TEXT);
        let entry = encode_entry(&nodes, &key(TEXT));
        let edited = TEXT.replace("1.4", "1.5");
        assert!(decode_entry(&entry, &key(&edited)).is_none());
        // One byte more of whitespace is another text too.
        assert!(decode_entry(&entry, &key(&format!("{TEXT} "))).is_none());
    }

    #[test]
    fn a_damaged_or_cut_entry_is_a_miss() {
        let nodes = parsed(TEXT);
        let k = key(TEXT);
        let entry = encode_entry(&nodes, &k);
        for at in [0, 8, 40, 48, entry.len() / 2, entry.len() - 1] {
            let mut bad = entry.clone();
            bad[at] ^= 0x20;
            assert!(decode_entry(&bad, &k).is_none(), "flipped byte {at}");
        }
        for len in [0, 7, 47, 60, entry.len() - 1] {
            assert!(decode_entry(&entry[..len], &k).is_none(), "cut at {len}");
        }
        let mut longer = entry.clone();
        longer.push(0);
        assert!(decode_entry(&longer, &k).is_none());
    }

    #[test]
    fn a_payload_with_a_huge_count_is_refused_without_allocating_it() {
        let mut payload = Vec::new();
        put_u64(&mut payload, u64::MAX / 2);
        assert!(nodes(&mut Reader::new(&payload), 0).is_none());
    }

    #[test]
    fn written_only_into_an_existing_imgraph_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes = parsed(TEXT);
        write(dir.path(), TEXT, &nodes);
        assert!(!dir.path().join(".imgraph").exists());
        assert!(read(dir.path(), TEXT).is_none());

        std::fs::create_dir(dir.path().join(".imgraph")).expect("create .imgraph");
        write(dir.path(), TEXT, &nodes);
        assert!(dir.path().join(CACHE_FILE).is_file());
        assert_eq!(
            read(dir.path(), TEXT).map(|d| format!("{d:?}")),
            Some(format!("{nodes:?}"))
        );
        assert!(read(dir.path(), &TEXT.replace("smoke", "smoky")).is_none());
        let left: Vec<_> = std::fs::read_dir(dir.path().join(".imgraph"))
            .expect("read .imgraph")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("config.cache")]);
    }
}
