//! Board profiles and detection.
