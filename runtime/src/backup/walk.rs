//! Walking a partition (skeleton).
/// Deepest directory nesting a snapshot walks.
pub const MAX_DEPTH: usize = 64;
