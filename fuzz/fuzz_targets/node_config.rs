//! The node config parser (`node.toml`): any text gives a validated config or a typed
//! error; never a panic.
#![no_main]

use std::path::Path;

use hedge_runtime::config::NodeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = NodeConfig::parse(text, Path::new("/etc/hedge/node.toml")) {
        // The accessors the daemon calls at boot must not panic either.
        let _ = cfg.node_id();
        let _ = cfg.state_dir();
        let _ = cfg.profile();
        let _ = cfg.max_instances();
        let _ = cfg.master_key();
        let _ = cfg.policy();
    }
});
