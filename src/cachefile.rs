//! Cache files: what imgraph keeps beside a project only to skip work (the config's
//! parse, the stat cache), in one envelope that makes a stale or damaged file a miss.
//!
//! An entry is `MAGIC` (8 bytes, which cache), a key (the blake3 of everything the
//! payload was derived from, the writer's format and version included), the payload's
//! length (`u64`), the payload, and the payload's blake3. [`open`] gives the payload back
//! only when all of these check out, so a file of another format or imgraph, a file cut
//! short by a crash or a flipped byte is never decoded. Writes go through a temporary
//! file in the same folder and a rename: a reader sees a whole entry or the previous
//! one. Entries are not fsynced: a power loss leaves at worst a damaged entry, which the
//! checksum turns into a miss.
//!
//! Numbers are little-endian; strings are a `u64` length and their bytes. [`Reader`]
//! reads them back, answering `None` at the first thing out of place.

use std::io::{Read, Write};
use std::path::Path;

/// Bytes of the envelope before the payload: magic, key, length.
const HEAD: usize = 8 + 32 + 8;

/// The key of an entry of the cache `magic` in its encoding `format`, derived from
/// `from`: this imgraph's version is part of it, so another imgraph's entries miss.
pub(crate) fn key(magic: &[u8; 8], format: u32, from: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(magic);
    h.update(&format.to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(&[0]);
    h.update(from);
    h.finalize()
}

/// A new entry for `magic` and `key`: append the payload, then call [`finish`].
pub(crate) fn begin(magic: &[u8; 8], key: &blake3::Hash, payload_hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + payload_hint + 32);
    out.extend_from_slice(magic);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out
}

/// Seals an entry made by [`begin`]: its payload's length and checksum.
pub(crate) fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let len = (out.len() - HEAD) as u64;
    out[HEAD - 8..HEAD].copy_from_slice(&len.to_le_bytes());
    let sum = blake3::hash(&out[HEAD..]);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// The payload of a whole entry written for `magic` and `key`; `None` for anything else.
pub(crate) fn open<'a>(bytes: &'a [u8], magic: &[u8; 8], key: &blake3::Hash) -> Option<&'a [u8]> {
    open_range(bytes, magic, key).map(|range| &bytes[range])
}

/// Where [`open`]'s payload is in `bytes`, for a caller that keeps the bytes.
pub(crate) fn open_range(
    bytes: &[u8],
    magic: &[u8; 8],
    key: &blake3::Hash,
) -> Option<std::ops::Range<usize>> {
    let mut r = Reader::new(bytes);
    if r.take(magic.len())? != magic || r.take(32)? != key.as_bytes() {
        return None;
    }
    let len = r.usize()?;
    let start = r.position();
    let payload = r.take(len)?;
    let sum = r.take(32)?;
    (sum == blake3::hash(payload).as_bytes() && r.is_done()).then_some(start..start + len)
}

/// The bytes of `file`, at most `max` of them (a longer file is read cut, and so misses).
/// The buffer is sized from the file's length first: a stat cache of 20,000 entries is
/// 4 MB, which a growing buffer would copy and fault in about twice over.
pub(crate) fn read(file: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(file)?;
    let len = file.metadata()?.len().min(max);
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0).saturating_add(1));
    file.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Replaces `file` with `bytes` through a temporary file beside it and a rename.
pub(crate) fn write(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file.file_name().unwrap_or_default());
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(folder)?;
    tmp.write_all(bytes)?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

pub(crate) fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads what the `put_*` functions wrote.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Whether every byte was read.
    pub(crate) fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// How many bytes have been read.
    pub(crate) fn position(&self) -> usize {
        self.at
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub(crate) fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn i128(&mut self) -> Option<i128> {
        self.array().map(i128::from_le_bytes)
    }

    pub(crate) fn usize(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }

    /// A count of things still to read, each at least `min` bytes: never more than the
    /// bytes left allow, so a damaged count cannot make a huge allocation.
    pub(crate) fn count(&mut self, min: usize) -> Option<usize> {
        let n = self.usize()?;
        (n <= (self.bytes.len() - self.at) / min.max(1)).then_some(n)
    }

    /// A string's bytes, checked to be UTF-8, borrowed from the entry.
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        let len = self.usize()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8; 8] = b"imgraphT";

    fn entry(key: &blake3::Hash) -> Vec<u8> {
        let mut out = begin(MAGIC, key, 16);
        put_str(&mut out, "payload");
        put_u64(&mut out, 7);
        finish(out)
    }

    #[test]
    fn an_entry_opens_for_its_own_magic_and_key_only() {
        let key = blake3::hash(b"k");
        let bytes = entry(&key);
        let payload = open(&bytes, MAGIC, &key).expect("own entry");
        let mut r = Reader::new(payload);
        assert_eq!(r.str(), Some("payload"));
        assert_eq!(r.u64(), Some(7));
        assert!(r.is_done());
        assert!(open(&bytes, b"imgraphU", &key).is_none());
        assert!(open(&bytes, MAGIC, &blake3::hash(b"other")).is_none());
    }

    #[test]
    fn a_damaged_cut_or_longer_entry_is_a_miss() {
        let key = blake3::hash(b"k");
        let bytes = entry(&key);
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            assert!(open(&bad, MAGIC, &key).is_none(), "flipped byte {at}");
        }
        for len in 0..bytes.len() {
            assert!(open(&bytes[..len], MAGIC, &key).is_none(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(open(&longer, MAGIC, &key).is_none());
    }

    #[test]
    fn a_huge_count_is_refused() {
        let mut payload = Vec::new();
        put_u64(&mut payload, u64::MAX / 2);
        assert_eq!(Reader::new(&payload).count(1), None);
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("x.cache");
        write(&file, b"one").expect("write");
        write(&file, b"two").expect("write again");
        assert_eq!(read(&file, 100).expect("read"), b"two");
        assert_eq!(read(&file, 2).expect("read cut"), b"tw");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.cache")]);
    }
}
