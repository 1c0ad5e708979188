//! Lower-case hexadecimal.
//!
//! Contract: [`encode`] writes two lower-case digits a byte. [`decode`] takes an even
//! number of digits of either case and nothing else (no sign, no spaces); [`decode_array`]
//! also wants exactly `2 * N` digits. Bad input is `None`, never a panic.

use std::fmt::Write;

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The bytes `s` spells in hex.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The `N` bytes `s` spells in hex (exactly `2 * N` digits).
pub fn decode_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    decode(s)?.try_into().ok()
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_lower_case() {
        assert_eq!(encode(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn decodes_either_case_and_round_trips() {
        assert_eq!(decode("000fA0fF"), Some(vec![0x00, 0x0f, 0xa0, 0xff]));
        assert_eq!(decode(""), Some(vec![]));
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), Some(all));
        assert_eq!(decode_array::<2>("beef"), Some([0xbe, 0xef]));
    }

    #[test]
    fn refuses_what_is_not_hex() {
        for bad in ["0", "abc", "0g", "+f", "-1", " 1", "é0", "0x"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode_array::<2>("bee"), None);
        assert_eq!(decode_array::<2>("beefee"), None);
        assert_eq!(decode_array::<1>("be"), Some([0xbe]));
    }
}
