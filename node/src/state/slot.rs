//! One slot of the persisted state: a header line that carries a sequence number, the length of
//! the JSON that follows and its checksum, then the JSON, then newlines up to the slot's size.
//!
//! The store keeps two slots and overwrites the older one in place, so a save costs one
//! `fdatasync` of data blocks the file already owns instead of a temp file, a rename and two
//! fsyncs. A write torn by a crash leaves a slot whose checksum does not match; the other slot
//! still holds the last completed save. The JSON stays readable: `tail -n +2 state.a | jq`.

use sha2::{Digest, Sha256};

/// The header's first word and version; a different version is refused, never guessed at.
const MAGIC: &str = "muster-state v1";

/// A header line is at most this long (the magic, three fields, a SHA-256 in hex).
const MAX_HEADER: usize = 160;

/// The smallest slot, and the unit slots grow in.
pub const PAGE: usize = 4096;

/// A slot's content, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Higher is newer.
    pub seq: u64,
    /// The JSON the header's checksum covers.
    pub json: &'a [u8],
}

/// Why a slot does not decode (a torn write, or damage): said in the store's errors and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// No complete header line.
    #[error("no header line")]
    NoHeader,
    /// The header does not read `muster-state v1 seq=… len=… sha256=…`.
    #[error("the header is not `{MAGIC} seq=N len=N sha256=HEX`: {0:?}")]
    BadHeader(String),
    /// The header says more bytes follow than the slot holds.
    #[error("the header announces {want} bytes of state, the slot holds {have} (a torn write?)")]
    Short {
        /// Announced.
        want: u64,
        /// Present after the header.
        have: usize,
    },
    /// The bytes after the header do not match its checksum.
    #[error("the checksum does not match (a torn write, or damage)")]
    Checksum,
}

fn digest(seq: u64, json: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_le_bytes());
    h.update(json);
    hex::encode(h.finalize())
}

/// The slot size for `needed` bytes: twice that, in whole pages, so that a growing member list
/// rarely outgrows its slot (growing a slot replaces the file instead of writing in place).
pub fn capacity_for(needed: usize) -> usize {
    needed
        .saturating_mul(2)
        .div_ceil(PAGE)
        .max(1)
        .saturating_mul(PAGE)
}

/// The header's length: its numbers have fixed widths, so a save writes the JSON straight into
/// a buffer after room kept for the header ([`buffer`], [`seal`]) instead of copying it.
pub const HEADER_LEN: usize =
    MAGIC.len() + " seq=".len() + 20 + " len=".len() + 20 + " sha256=".len() + 64 + 1;

const _: () = assert!(HEADER_LEN <= MAX_HEADER, "decode reads the whole header");

/// A slot buffer: room for the header; the JSON goes after it.
pub fn buffer() -> Vec<u8> {
    let mut b = Vec::with_capacity(PAGE);
    b.resize(HEADER_LEN, b' ');
    b
}

/// Writes slot `seq`'s header into the room [`buffer`] kept, for the JSON after it.
pub fn seal(seq: u64, slot: &mut [u8]) {
    let Some((head, json)) = slot.split_at_mut_checked(HEADER_LEN) else {
        return;
    };
    let header = format!(
        "{MAGIC} seq={seq:020} len={:020} sha256={}\n",
        json.len(),
        digest(seq, json)
    );
    head.copy_from_slice(header.as_bytes());
}

/// Encodes `json` as slot `seq`, padded with newlines to at least `min_len` bytes.
pub fn encode(seq: u64, json: &[u8], min_len: usize) -> Vec<u8> {
    let mut out = buffer();
    out.extend_from_slice(json);
    seal(seq, &mut out);
    if out.len() < min_len {
        out.resize(min_len, b'\n');
    }
    out
}

/// Decodes a slot's bytes; anything after the announced JSON is padding and ignored.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, SlotError> {
    let end = bytes
        .iter()
        .take(MAX_HEADER)
        .position(|b| *b == b'\n')
        .ok_or(SlotError::NoHeader)?;
    let (line, rest) = bytes.split_at_checked(end).ok_or(SlotError::NoHeader)?;
    let rest = rest.get(1..).unwrap_or_default();
    let bad = || SlotError::BadHeader(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let fields = text
        .strip_prefix(MAGIC)
        .and_then(|t| t.strip_prefix(' '))
        .ok_or_else(bad)?;
    let mut parts = fields.split(' ');
    let mut field = |name: &str| {
        parts
            .next()
            .and_then(|p| p.strip_prefix(name))
            .and_then(|p| p.strip_prefix('='))
            .ok_or_else(bad)
    };
    let seq: u64 = field("seq")?.parse().map_err(|_| bad())?;
    let len: u64 = field("len")?.parse().map_err(|_| bad())?;
    let sum = field("sha256")?;
    if parts.next().is_some() {
        return Err(bad());
    }
    let json = usize::try_from(len)
        .ok()
        .and_then(|l| rest.get(..l))
        .ok_or(SlotError::Short {
            want: len,
            have: rest.len(),
        })?;
    if digest(seq, json) != sum {
        return Err(SlotError::Checksum);
    }
    Ok(Decoded { seq, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_the_padding() {
        let bytes = encode(7, br#"{"a":1}"#, 300);
        assert_eq!(bytes.len(), 300);
        assert_eq!(
            decode(&bytes).unwrap(),
            Decoded {
                seq: 7,
                json: br#"{"a":1}"#
            }
        );
    }

    #[test]
    fn any_damage_is_caught() {
        let bytes = encode(3, br#"{"members":["a","b"]}"#, 0);
        for at in 0..bytes.len() - 1 {
            let mut b = bytes.clone();
            b[at] ^= 0x20;
            assert!(decode(&b).is_err(), "a flipped byte at {at} is caught");
        }
        for cut in 0..bytes.len() - 1 {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} is caught");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(decode(b"").unwrap_err(), SlotError::NoHeader);
        assert!(matches!(decode(b"{\"json\":1}\n"), Err(SlotError::BadHeader(_))));
        let bytes = encode(1, b"{}", 0);
        assert!(matches!(
            decode(&bytes[..bytes.len() - 2]),
            Err(SlotError::Short { want: 2, .. })
        ));
        let other_seq = String::from_utf8(bytes.clone())
            .unwrap()
            .replacen("1 len=", "2 len=", 1);
        assert_eq!(decode(other_seq.as_bytes()).unwrap_err(), SlotError::Checksum);
    }

    #[test]
    fn the_header_has_the_length_kept_for_it() {
        let bytes = encode(u64::MAX, &[b'x'; 3], 0);
        assert_eq!(bytes.iter().position(|b| *b == b'\n'), Some(HEADER_LEN - 1));
    }

    #[test]
    fn slots_grow_in_pages_with_room_to_spare() {
        assert_eq!(capacity_for(0), PAGE);
        assert_eq!(capacity_for(100), PAGE);
        assert_eq!(capacity_for(3000), 2 * PAGE);
        assert!(capacity_for(10_000) >= 20_000);
    }
}
