//! The parse cache: the raw tree of the config text that last loaded cleanly, kept in
//! `.imgraph/config.cache` at the project root, so a project whose `imgraph.kdl` did not
//! change skips the KDL parser (half the time of a no-change `apply` of a 1,000-image
//! project: the parser costs about 5,600 instructions per byte of config).
//!
//! Only the step that is a pure function of the text is cached: text → [`raw::Node`]
//! tree. Validation, which also looks at the disk (paths, globs, the state folder), runs
//! on every load as before, so a cached tree can never hide a deleted input. The entry is
//! keyed by the blake3 of the text together with this file's [`FORMAT`] and imgraph's
//! version, and stored with a checksum of its bytes: a different text, a different
//! imgraph or a damaged file is a miss, and a miss is parsed as if there were no cache.
//!
//! The cache is an optimisation and never an error: a file that cannot be read or written
//! is ignored. It is written only into an existing `.imgraph/` (the folder imgraph already
//! owns: walks skip it, inputs may not name it), never creating one, and only after the
//! whole config validated, so a bad config changes nothing. Writes go through a temporary
//! file and a rename, so a reader sees a whole entry or none; the entry is not fsynced (a
//! power loss leaves at worst a damaged entry, which the checksum turns into a miss).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use miette::SourceSpan;

use super::raw::{Node, Prop, Scalar, Value, MAX_DEPTH};
use super::MAX_CONFIG_BYTES;

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
    let mut h = blake3::Hasher::new();
    h.update(MAGIC);
    h.update(&FORMAT.to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(&[0]);
    h.update(text.as_bytes());
    h.finalize()
}

fn path(root: &Path) -> PathBuf {
    root.join(CACHE_FILE)
}

/// The cached tree of `text` in the project at `root`, if there is a whole entry for it.
pub(super) fn read(root: &Path, text: &str) -> Option<Vec<Node>> {
    let file = path(root);
    let bytes = match read_entry(&file) {
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

fn read_entry(file: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)?
        .take(MAX_ENTRY_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Stores `nodes` as the tree of `text`, when `.imgraph/` exists (best effort).
pub(super) fn write(root: &Path, text: &str, nodes: &[Node]) {
    let file = path(root);
    let Some(folder) = file.parent() else { return };
    if !folder.is_dir() {
        return;
    }
    let bytes = encode_entry(nodes, &key(text));
    if let Err(e) = write_entry(folder, &file, &bytes) {
        tracing::debug!(path = %file.display(), error = %e, "config cache not written");
    }
}

fn write_entry(folder: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.cache.")
        .suffix(".tmp")
        .tempfile_in(folder)?;
    tmp.write_all(bytes)?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// `MAGIC`, the key, the payload's length, the payload, the payload's blake3.
fn encode_entry(nodes: &[Node], key: &blake3::Hash) -> Vec<u8> {
    let mut payload = Vec::new();
    put_nodes(&mut payload, nodes);
    let mut out = Vec::with_capacity(payload.len() + 80);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(blake3::hash(&payload).as_bytes());
    out
}

fn decode_entry(bytes: &[u8], key: &blake3::Hash) -> Option<Vec<Node>> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len())? != MAGIC || r.take(32)? != key.as_bytes() {
        return None;
    }
    let len = usize::try_from(r.u64()?).ok()?;
    let payload = r.take(len)?;
    if r.take(32)? != blake3::hash(payload).as_bytes() || r.at != bytes.len() {
        return None;
    }
    let mut p = Reader {
        bytes: payload,
        at: 0,
    };
    let nodes = p.nodes(0)?;
    (p.at == payload.len()).then_some(nodes)
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
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

/// Reads what the `put_*` functions wrote; `None` at the first thing out of place.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn usize(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }

    /// A count of things still to read, each at least `min` bytes: never more than the
    /// bytes left allow, so a damaged count cannot make a huge allocation.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = self.usize()?;
        (n <= (self.bytes.len() - self.at) / min).then_some(n)
    }

    fn string(&mut self) -> Option<String> {
        let len = self.usize()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    fn span(&mut self) -> Option<SourceSpan> {
        let offset = self.usize()?;
        let len = self.usize()?;
        Some(SourceSpan::new(offset.into(), len))
    }

    fn value(&mut self) -> Option<Value> {
        let value = match self.byte()? {
            0 => Scalar::String(self.string()?),
            1 => Scalar::Integer(i128::from_le_bytes(self.take(16)?.try_into().ok()?)),
            2 => Scalar::Float(f64::from_bits(self.u64()?)),
            3 => Scalar::Bool(false),
            4 => Scalar::Bool(true),
            5 => Scalar::Null,
            _ => return None,
        };
        Some(Value {
            value,
            span: self.span()?,
        })
    }

    fn nodes(&mut self, depth: usize) -> Option<Vec<Node>> {
        if depth > MAX_DEPTH {
            return None;
        }
        // A node takes at least 8 (name) + 32 (spans) + 16 (counts) + 1 + 16 bytes.
        let n = self.count(73)?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string()?;
            let name_span = self.span()?;
            let head_span = self.span()?;
            let args = (0..self.count(17)?)
                .map(|_| self.value())
                .collect::<Option<Vec<_>>>()?;
            let props = (0..self.count(41)?)
                .map(|_| {
                    Some(Prop {
                        name: self.string()?,
                        name_span: self.span()?,
                        value: self.value()?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            let children = match self.byte()? {
                0 => None,
                1 => Some(self.nodes(depth + 1)?),
                _ => return None,
            };
            nodes.push(Node {
                name,
                name_span,
                head_span,
                args,
                props,
                children,
                children_span: self.span()?,
            });
        }
        Some(nodes)
    }
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
        let mut r = Reader {
            bytes: &payload,
            at: 0,
        };
        assert!(r.nodes(0).is_none());
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
