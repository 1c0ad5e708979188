//! The chunker (skeleton).
/// Largest chunk.
pub const MAX: usize = 256 * 1024;
