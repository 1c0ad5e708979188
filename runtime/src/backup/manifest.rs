//! The manifest (skeleton).
