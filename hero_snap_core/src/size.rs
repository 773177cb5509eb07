//! Sizes as operators write them: bytes, or with a binary suffix (`10G`). `--min-free`
//! and the bandwidth limits read them.

/// Parses a size: bytes, or with a binary suffix `K`, `M`, `G`, `T` (`10G` = 10 GiB).
pub(crate) fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{s}`: unknown size suffix (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("`{s}`: not a size (e.g. 500M, 10G)"))?;
    n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(|| format!("`{s}`: too large"))
}
