//! Sorted id lists (skeleton).
#![allow(missing_docs)]
pub struct IdReader;
impl Iterator for IdReader {
    type Item = std::io::Result<[u8; 32]>;
    fn next(&mut self) -> Option<Self::Item> {
        None
    }
}
