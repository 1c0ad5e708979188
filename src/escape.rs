//! Printing text an instance wrote to an operator's terminal.
//!
//! Contract: [`Escaper::feed`] copies bytes through, except that every control character
//! but `\n` and `\t` (C0, DEL, and the C1 range U+0080..=U+009F) is written as a visible
//! escape (`\x1b`, `\u{9b}`), and every byte that is not part of valid UTF-8 as `\xNN`:
//! an instance's log cannot move the cursor, retitle the window or answer for the
//! terminal. A character split across two reads is held until the next
//! [`Escaper::feed`] (or escaped by [`Escaper::finish`]). Pure: no I/O.

/// Escapes a byte stream chunk by chunk.
#[derive(Debug, Default)]
pub struct Escaper {
    /// The start of a UTF-8 sequence cut at the end of the last chunk.
    carry: Vec<u8>,
}

impl Escaper {
    /// Appends the printable form of `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(input);
        let mut rest = buf.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    push_escaped(s, out);
                    return;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is UTF-8 by `valid_up_to`.
                    push_escaped(std::str::from_utf8(valid).unwrap_or_default(), out);
                    match e.error_len() {
                        Some(n) => {
                            for b in &after[..n] {
                                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
                            }
                            rest = &after[n..];
                        }
                        None => {
                            // Cut at the end: maybe completed by the next chunk.
                            self.carry = after.to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Escapes what is left of a sequence cut at the end of the input.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for b in std::mem::take(&mut self.carry) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
    }
}

fn push_escaped(s: &str, out: &mut Vec<u8>) {
    for c in s.chars() {
        if c == '\n' || c == '\t' || !c.is_control() {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        } else if u32::from(c) < 0x80 {
            out.extend_from_slice(format!("\\x{:02x}", u32::from(c)).as_bytes());
        } else {
            out.extend_from_slice(format!("\\u{{{:x}}}", u32::from(c)).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escape_in_chunks(input: &[u8], chunk: usize) -> String {
        let mut e = Escaper::default();
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            e.feed(c, &mut out);
        }
        e.finish(&mut out);
        String::from_utf8(out).expect("escaped output is UTF-8")
    }

    #[test]
    fn controls_are_escaped_text_and_newlines_kept() {
        let input = "ok\tgood\n\x1b[2J\x1b]0;pwned\x07\rx\x7f\u{9b}31m é€😀\n".as_bytes();
        let want = "ok\tgood\n\\x1b[2J\\x1b]0;pwned\\x07\\x0dx\\x7f\\u{9b}31m é€😀\n";
        for chunk in [1, 2, 3, 5, 64] {
            assert_eq!(escape_in_chunks(input, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn invalid_utf8_is_escaped_byte_by_byte() {
        assert_eq!(escape_in_chunks(b"a\x9bb\xff\xc3", 1), "a\\x9bb\\xff\\xc3");
        assert_eq!(escape_in_chunks(b"a\x9bb\xff\xc3", 64), "a\\x9bb\\xff\\xc3");
        // No raw control byte ever comes out.
        let all: Vec<u8> = (0..=255u8).collect();
        let out = escape_in_chunks(&all, 7);
        assert!(out
            .chars()
            .all(|c| c == '\n' || c == '\t' || !c.is_control()));
    }
}
