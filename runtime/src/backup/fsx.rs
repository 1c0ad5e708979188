//! File helpers (skeleton).
