//! Keys (skeleton).
#![allow(missing_docs)]
pub struct Secret;
