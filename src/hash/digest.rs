//! The byte-level encodings behind every digest imgraph writes.
//!
//! Every encoding starts with a domain string, and every variable-length field is written
//! with a little-endian `u64` length prefix, so two different field lists can never produce
//! the same byte stream (`("ab", "c")` and `("a", "bc")` differ). The only unprefixed field
//! is a file's content, which is always last. Digests are rendered as `b3v1:` followed by
//! 64 lowercase hex characters; the prefix names this encoding, so a future change of
//! encoding changes every key instead of silently comparing unlike values.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use super::FORMAT;

/// Domain of regular files, symlinks and directories (the kind is the next field). v2:
/// a file's digest is its content only; its mode is a field of its manifest entry.
pub const FILE_DOMAIN: &str = "imgraph-file-v2";
/// Domain of directory trees (`Hasher::tree_digest`). v2: modes and folders count.
pub(crate) const TREE_DOMAIN: &str = "imgraph-tree-v2";
/// Domain of manifests (`Manifest::digest`). v2: kind, digest and mode of each entry, no
/// trigger.
pub(crate) const MANIFEST_DOMAIN: &str = "imgraph-manifest-v2";
/// Domain of probe output.
const PROBE_DOMAIN: &str = "imgraph-probe-v1";
/// Domain of the values of `env` variables.
const ENV_DOMAIN: &str = "imgraph-env-v1";
/// Namespace of `digest_parts`; the caller's domain is its first field, so a caller can
/// never reproduce one of the encodings above by picking a domain name.
const PARTS_DOMAIN: &str = "imgraph-parts-v1";

/// Files at least this large are read in big chunks hashed with blake3's rayon mode; below
/// it the thread-pool hand-off costs more than it saves (blake3 recommends ≥ 128 KiB).
const PARALLEL_THRESHOLD: u64 = 1 << 20;
const BIG_CHUNK: usize = 1 << 20;
const SMALL_CHUNK: usize = 64 << 10;

thread_local! {
    /// The buffer a thread reads small files into, kept for every file it hashes: a new
    /// zeroed 64 KiB buffer for each file of a 20,000-file tree was an allocation and a
    /// 64 KiB memset per file.
    static SMALL_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A blake3 hasher that writes length-prefixed fields after a domain string.
///
/// Fields are gathered in a buffer and handed to blake3 in large pieces: a manifest of
/// 20,000 entries is 80,000 small fields, and blake3 fed a few bytes at a time cost ten
/// times what it costs fed whole chunks (it can then hash several chunks at once). The
/// bytes hashed, and so the digests, are the same.
pub(crate) struct Encoder {
    hasher: blake3::Hasher,
    pending: Vec<u8>,
}

/// How many bytes an [`Encoder`] gathers before handing them to blake3.
const ENCODER_BUFFER: usize = 64 << 10;

impl Encoder {
    pub(crate) fn new(domain: &str) -> Self {
        let mut encoder = Encoder {
            hasher: blake3::Hasher::new(),
            pending: Vec::new(),
        };
        encoder.field(domain.as_bytes());
        encoder
    }

    pub(crate) fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.put(&(bytes.len() as u64).to_le_bytes());
        self.put(bytes)
    }

    pub(crate) fn count(&mut self, n: usize) -> &mut Self {
        self.put(&(n as u64).to_le_bytes())
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        if self.pending.len() + bytes.len() > ENCODER_BUFFER {
            self.flush();
            if bytes.len() > ENCODER_BUFFER {
                self.hasher.update(bytes);
                return self;
            }
        }
        self.pending.extend_from_slice(bytes);
        self
    }

    /// The blake3 state with every field written so far, for unprefixed content.
    fn hasher(&mut self) -> &mut blake3::Hasher {
        self.flush();
        &mut self.hasher
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.hasher.update(&self.pending);
            self.pending.clear();
        }
    }

    pub(crate) fn finish(&mut self) -> String {
        format!("{FORMAT}:{}", self.hasher().finalize().to_hex())
    }
}

/// Digest of a regular file: kind, then the content (its mode is hashed beside it, in
/// the manifest entry, so a plan can tell a mode change from a content change).
///
/// `len_hint` only picks the read strategy; the digest covers whatever bytes are read.
pub(crate) fn file(file: &mut File, len_hint: u64) -> io::Result<String> {
    let mut encoder = Encoder::new(FILE_DOMAIN);
    encoder.field(b"file");
    let hasher = encoder.hasher();
    if len_hint >= PARALLEL_THRESHOLD {
        let mut buf = vec![0u8; BIG_CHUNK];
        loop {
            let n = read_full(file, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update_rayon(&buf[..n]);
        }
    } else {
        SMALL_BUF.with(|cell| {
            // Nothing below hands work to another task, so the thread's buffer is free;
            // a fresh one stands in if it ever is not.
            let mut own = Vec::new();
            let mut borrowed = cell.try_borrow_mut();
            let buf = match borrowed.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut own,
            };
            buf.resize(SMALL_CHUNK, 0);
            loop {
                let n = match file.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                hasher.update(&buf[..n]);
            }
            Ok(())
        })?;
    }
    Ok(encoder.finish())
}

/// Fills `buf` as far as the file allows, so rayon mode gets whole chunks to split.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Digest of a symbolic link: its target string, never what it points at.
pub(crate) fn symlink(target: &OsStr) -> String {
    let mut encoder = Encoder::new(FILE_DOMAIN);
    encoder.field(b"symlink").field(target.as_bytes());
    encoder.finish()
}

/// Digest of a directory as such (what is below it are entries of their own, and its
/// mode is a field of its manifest entry).
pub(crate) fn dir() -> String {
    let mut encoder = Encoder::new(FILE_DOMAIN);
    encoder.field(b"dir");
    encoder.finish()
}

/// Digest of an environment variable's value; unset and empty differ.
pub(crate) fn env(value: Option<&OsStr>) -> String {
    let mut encoder = Encoder::new(ENV_DOMAIN);
    match value {
        None => encoder.field(b"unset"),
        Some(v) => encoder.field(b"set").field(v.as_bytes()),
    };
    encoder.finish()
}

/// Digest of a probe command's standard output.
#[cfg(test)]
pub(crate) fn probe(stdout: &[u8]) -> String {
    let mut encoder = Encoder::new(PROBE_DOMAIN);
    encoder.field(stdout);
    encoder.finish()
}

/// [`probe`] of `len` bytes read from `stdout`, without holding them in memory (the same
/// digest as `probe` of those bytes).
pub(crate) fn probe_stream(len: u64, stdout: &mut impl Read) -> io::Result<String> {
    let mut encoder = Encoder::new(PROBE_DOMAIN);
    let hasher = encoder.hasher();
    hasher.update(&len.to_le_bytes());
    let copied = io::copy(&mut stdout.take(len), hasher)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the captured output is shorter than what was read",
        ));
    }
    Ok(encoder.finish())
}

/// blake3 of labelled parts, as a `b3v1:` digest. Each part is length-prefixed, so
/// `("ab", "c")` and `("a", "bc")` differ, and the domain separates unrelated uses (a key
/// of a build node never equals a key of a test node made of the same strings).
pub fn digest_parts(domain: &str, parts: &[&str]) -> String {
    let mut encoder = Encoder::new(PARTS_DOMAIN);
    encoder.field(domain.as_bytes()).count(parts.len());
    for part in parts {
        encoder.field(part.as_bytes());
    }
    encoder.finish()
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[test]
    fn streaming_a_probe_gives_the_digest_of_its_bytes() {
        let out = b"nginx 1.22\nopenssl 3.0\n".repeat(1000);
        let streamed = probe_stream(out.len() as u64, &mut &out[..]).unwrap();
        assert_eq!(streamed, probe(&out));
        assert!(probe_stream(out.len() as u64 + 1, &mut &out[..]).is_err());
    }
}
