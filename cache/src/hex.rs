//! Lowercase hex for the hashes the store's own JSON files keep (build records, the
//! chunk index).

/// `bytes` as lowercase hex.
pub(crate) fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of hex `s` (any case), if it is hex of at most `max` bytes.
pub(crate) fn decode(s: &str, max: usize) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * max {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// The 32 bytes of the hex of a 32-byte hash.
pub(crate) fn decode32(s: &str) -> Option<[u8; 32]> {
    decode(s, 32)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_hex_of_that_length() {
        let h = [0xabu8; 32];
        assert_eq!(encode(&h), "ab".repeat(32));
        assert_eq!(decode32(&encode(&h)), Some(h));
        assert_eq!(decode32(&"AB".repeat(32)), Some(h));
        assert_eq!(decode32(&"ab".repeat(31)), None);
        assert_eq!(decode32(&"zz".repeat(32)), None);
        assert_eq!(decode("abc", 8), None);
        assert_eq!(decode("0102", 1), None);
        assert_eq!(decode("0102", 2), Some(vec![1, 2]));
    }
}
