//! The hedge master.
