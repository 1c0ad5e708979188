//! `hedge`: the node and master binary.
fn main() {}
