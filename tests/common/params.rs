//! Request files of connection-parameter tests: a database that publishes its host and
//! port, and an app whose config file renders a template of them.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

/// `db`, publishing `{"host":"127.0.0.1","port":PORT}` (atomically, as
/// `etc/connection.json`); the request file's path, written in `dir`.
pub fn db_request(dir: &Path, port: &str) -> String {
    let file = dir.join(format!("db-{port}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"
name = "db"
software = "exec:/bin/sh"
args = ["-c", "printf '{{\"host\":\"127.0.0.1\",\"port\":%s}}' $PORT > etc/connection.json.tmp && mv etc/connection.json.tmp etc/connection.json; exec sleep 100000"]
[parameters]
port = "{port}"
"#
        ),
    )
    .unwrap();
    file.to_str().unwrap().to_owned()
}

/// `app`, rendering `template` (a TOML basic string's contents) into `etc/app.conf`;
/// the request file's path, written in `dir`.
pub fn app_request(dir: &Path, template: &str) -> String {
    let file = dir.join("app.toml");
    std::fs::write(
        &file,
        format!(
            r#"
name = "app"
software = "exec:/bin/sleep"
args = ["100000"]
[[config_files]]
path = "etc/app.conf"
template = "{template}"
"#
        ),
    )
    .unwrap();
    file.to_str().unwrap().to_owned()
}
