//! The index trailer (decisions/D-17, FORMAT.md §1.4): a zstd skippable frame at the very
//! end of the compressed stream that says where the index's own zstd frame starts, so
//! that a reader can fetch the index with two ranged reads instead of the whole archive.
//!
//! zstd decoders (`zstd -d`, the zstd crate) skip skippable frames, so the trailer
//! changes nothing for a reader that reads the stream from the start.

use zstd::zstd_safe::MAGIC_SKIPPABLE_START;

/// The skippable-frame magic of the trailer: the range 0x184D2A50..=0x184D2A5F is zstd's,
/// the last nibble is ours to pick. `E` for "end".
pub(crate) const TRAILER_MAGIC: u32 = MAGIC_SKIPPABLE_START | 0xE;

/// What the frame's content starts with, so that a skippable frame of another program is
/// not taken for ours.
const TAG: &[u8; 8] = b"HSNAPIDX";

/// The trailer layout this build writes and reads.
const VERSION: u32 = 1;

/// Bytes of the frame's content: tag, version, flags, offset, length.
const CONTENT: usize = 8 + 4 + 4 + 8 + 8;

/// Bytes of the whole trailer, skippable-frame header included.
pub(crate) const TRAILER_LEN: u64 = 8 + CONTENT as u64;

/// Where the index frame lies in the decrypted (compressed) stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trailer {
    /// Offset of the index frame's first byte.
    pub offset: u64,
    /// Its length in bytes; it ends where the trailer starts.
    pub length: u64,
}

/// Why the last bytes of a stream are not a trailer this build reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotTrailer {
    /// No skippable frame of ours: an archive written before trailers existed.
    Absent,
    /// Ours, but damaged or of a newer layout; the text says which.
    Bad(String),
}

impl Trailer {
    /// The trailer's bytes. zstd-safe has constants for skippable frames but no safe
    /// writer (ZSTD_writeSkippableFrame is behind zstd-sys's experimental, unsafe FFI),
    /// and the frame is only a magic and a length before our content.
    pub(crate) fn encode(&self) -> [u8; TRAILER_LEN as usize] {
        let mut out = [0u8; TRAILER_LEN as usize];
        out[0..4].copy_from_slice(&TRAILER_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&(CONTENT as u32).to_le_bytes());
        out[8..16].copy_from_slice(TAG);
        out[16..20].copy_from_slice(&VERSION.to_le_bytes());
        // 20..24: flags, none defined.
        out[24..32].copy_from_slice(&self.offset.to_le_bytes());
        out[32..40].copy_from_slice(&self.length.to_le_bytes());
        out
    }

    /// Whether the start of a trailer (its magic, length and tag) is among the last bytes of
    /// a stream that does not end with one: the stream was cut short.
    pub(crate) fn cut_short(tail: &[u8]) -> bool {
        let mut start = Vec::with_capacity(16);
        start.extend_from_slice(&TRAILER_MAGIC.to_le_bytes());
        start.extend_from_slice(&(CONTENT as u32).to_le_bytes());
        start.extend_from_slice(TAG);
        tail.windows(start.len()).any(|w| w == start.as_slice())
    }

    /// Checks the end of a compressed stream read whole (`verify`, `restore`): a trailer of
    /// ours must be intact even though no zstd decoder looks inside it.
    pub(crate) fn check_end(tail: &[u8], stream_len: u64) -> Result<(), String> {
        match Trailer::decode(tail, stream_len) {
            Ok(_) | Err(NotTrailer::Absent) => Ok(()),
            Err(NotTrailer::Bad(m)) => Err(m),
        }
    }

    /// Reads the last [`TRAILER_LEN`] bytes of a compressed stream of `stream_len` bytes.
    pub(crate) fn decode(bytes: &[u8], stream_len: u64) -> Result<Trailer, NotTrailer> {
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let Some(start) = stream_len.checked_sub(TRAILER_LEN).filter(|_| bytes.len() == TRAILER_LEN as usize) else { return Err(NotTrailer::Absent) };
        // Another program's skippable frame is not ours to judge; ours must be whole.
        if u32_at(0) != TRAILER_MAGIC {
            return Err(NotTrailer::Absent);
        }
        if u32_at(4) as usize != CONTENT || &bytes[8..16] != TAG {
            return Err(NotTrailer::Bad("its index trailer is damaged: the frame's length or tag is wrong".into()));
        }
        let version = u32_at(16);
        if version != VERSION || u32_at(20) != 0 {
            return Err(NotTrailer::Bad(format!(
                "its index trailer is of layout {version} (flags {:#x}), which this build does not read; read it with a newer hero-snap",
                u32_at(20)
            )));
        }
        let trailer = Trailer { offset: u64_at(24), length: u64_at(32) };
        if trailer.length == 0 || trailer.offset.checked_add(trailer.length) != Some(start) {
            return Err(NotTrailer::Bad(format!(
                "its index trailer is damaged: it places the index frame at {}+{} bytes, but the trailer starts at byte {start}",
                trailer.offset, trailer.length
            )));
        }
        Ok(trailer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailer_reads_back_and_damage_is_told_apart_from_absence() {
        let t = Trailer { offset: 1000, length: 234 };
        let bytes = t.encode();
        let len = 1234 + TRAILER_LEN;
        assert_eq!(Trailer::decode(&bytes, len), Ok(t));
        // The end of a tar stream, or of a zstd frame: no trailer.
        assert_eq!(Trailer::decode(&[0u8; TRAILER_LEN as usize], len), Err(NotTrailer::Absent));
        // Another program's skippable frame; ours with a damaged tag.
        let mut other = bytes;
        other[0] = 0x5A;
        assert_eq!(Trailer::decode(&other, len), Err(NotTrailer::Absent));
        let mut damaged = bytes;
        damaged[8] = b'X';
        assert!(matches!(Trailer::decode(&damaged, len), Err(NotTrailer::Bad(_))));
        // Ours, pointing elsewhere than just before it.
        assert!(matches!(Trailer::decode(&bytes, len + 1), Err(NotTrailer::Bad(_))));
        assert!(Trailer::cut_short(&bytes[..30]));
        assert!(!Trailer::cut_short(&[0u8; 80]));
        let mut newer = bytes;
        newer[16] = 2;
        assert!(matches!(Trailer::decode(&newer, len), Err(NotTrailer::Bad(m)) if m.contains("newer hero-snap")));
    }
}
