#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::pki::{init, InitOptions};

#[test]
fn config_rejects_unknown_keys_and_exposed_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let opts = InitOptions {
        extra_sans: vec!["broker.example".into()],
        ..InitOptions::default()
    };
    init(dir, &opts).unwrap();
    let path = dir.join("master.toml");
    let text = std::fs::read_to_string(&path).unwrap();

    std::fs::write(&path, format!("{text}\n[extra]\nx = 1\n")).unwrap();
    assert!(matches!(
        MasterConfig::load(&path),
        Err(ConfigError::Parse { .. })
    ));

    std::fs::write(&path, &text).unwrap();
    std::fs::set_permissions(
        dir.join("signing.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = MasterConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("signing.key"), "{err}");
}

/// A fresh master directory: (its dir, master.toml's path, its text, it loaded).
fn fresh() -> (tempfile::TempDir, PathBuf, String, MasterConfig) {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), &InitOptions::default()).unwrap();
    let path = tmp.path().join("master.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = MasterConfig::load(&path).unwrap();
    (tmp, path, text, cfg)
}

/// The error of loading `text` with `from` replaced by `to`.
fn refused(path: &Path, text: &str, from: &str, to: &str) -> String {
    let bad = text.replace(from, to);
    assert_ne!(bad, text, "{from} is in the file");
    std::fs::write(path, bad).unwrap();
    MasterConfig::load(path).unwrap_err().to_string()
}

#[test]
fn the_act_section_has_defaults_and_is_checked() {
    let (_tmp, path, text, cfg) = fresh();
    let p = cfg.act_policy();
    assert!(cfg.act.enabled);
    assert_eq!((p.budget.fleet, p.budget.per_instance), (10, 1));
    assert_eq!(p.budget.window_ms, 3_600_000);
    let err = refused(&path, &text, "interval_ms = 10000", "interval_ms = 5");
    assert!(err.contains("act.interval_ms"), "{err}");
}

#[test]
fn the_backup_section_has_defaults_and_is_checked() {
    let (tmp, path, text, cfg) = fresh();
    assert_eq!(cfg.backup.quota_bytes_per_node, 4 << 30);
    assert_eq!(cfg.backup.dir, cfg.base.join("blobs"));
    assert!(tmp.path().join(crate::blobs::RECOVERY_KEY).is_file());
    let err = refused(
        &path,
        &text,
        "quota_bytes_per_node = 4294967296",
        "quota_bytes_per_node = 0",
    );
    assert!(err.contains("quota_bytes_per_node"), "{err}");
}
