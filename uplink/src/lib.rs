//! Node <-> master sync.
