//! A `hedge sandbox` run for end-to-end tests: the process, and its stdout (the status
//! table) line by line as it prints it.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;

use super::hedge;

/// A running `hedge sandbox ARGS --dir DIR`.
pub struct SandboxRun {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

impl SandboxRun {
    pub fn start(args: &[&str], dir: &Path) -> SandboxRun {
        let mut child = hedge()
            .arg("sandbox")
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = lines.clone();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for l in BufReader::new(stdout).lines() {
                    lines.lock().unwrap().push(l.unwrap());
                }
            })
        };
        SandboxRun {
            child,
            lines,
            reader,
        }
    }

    /// Whether a line printed so far satisfies `f`.
    pub fn printed(&self, f: impl Fn(&str) -> bool) -> bool {
        self.lines.lock().unwrap().iter().any(|l| f(l))
    }

    /// Waits for the end: its exit (stderr included) and everything it printed.
    pub fn finish(self) -> (Output, String) {
        let out = self.child.wait_with_output().unwrap();
        self.reader.join().unwrap();
        let stdout = self.lines.lock().unwrap().join("\n");
        (out, stdout)
    }
}

/// `hedge ARGS --config CONFIG`'s stdout as JSON, if it ran and printed JSON.
pub fn json_of(args: &[&str], config: &Path) -> Option<Value> {
    let out = hedge()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}
