//! Rendering an instance request into what the supervisor runs: program, arguments,
//! environment and config files, with `{{ key }}` replaced by parameter values.
//!
//! Contract: everything here is pure (the caller passes in what it looked up, such as
//! where the node's cache holds an artifact). [`render`] replaces `{{ key }}` (spaces around the
//! key allowed, key = `[A-Za-z0-9_.-]+`) with `lookup(key)`; substituted values are
//! inserted verbatim and never rendered again. A single `{`, or a `}}` that closes
//! nothing, is literal text. [`render_instance`] resolves a key from the request's own
//! parameters first; a key it lacks that holds a `.` is `other.key`, another instance's
//! connection parameter. An artifact's program is `<artifact dir>/<entry>` and the
//! instance gets `HEDGE_SOFTWARE=<artifact dir>`. [`Rendered::hash`] changes exactly when the rendered output
//! changes, so the supervisor restarts a running instance only when it must.
//! [`references`] lists the instances whose connection parameters a request consumes,
//! so the daemon knows which consumers to re-render when one publishes. The syntax and
//! that scan live in `hedge_wire::template`, which the master shares.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use hedge_wire::template::{peer_references, references};
use hedge_wire::template::{Piece, Pieces};
use hedge_wire::types::{InstanceRequest, SoftwareRelease};
use sha2::{Digest, Sha256};

use crate::partition::{check_rel_path, PartitionError};

/// Why a template or a request did not render.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// No parameter and no connection parameter has this key. A key holding a `.`
    /// may appear later, when the other instance publishes.
    #[error("no value for {{{{{0}}}}}")]
    Missing(String),
    /// A `{{` without `}}`, or a bad key between them.
    #[error("template syntax error at byte {offset} (near {near:?}): {reason}")]
    Syntax {
        /// Byte offset of the `{{` in the template.
        offset: usize,
        /// Up to 24 bytes of the template from there.
        near: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The request runs an artifact this node has not installed (yet).
    #[error("artifact not installed")]
    ArtifactMissing,
    /// A config file path (or an artifact's entry) is not a plain relative path.
    #[error("path {path:?}: {source}")]
    Path {
        /// The path as requested (cut to 128 bytes).
        path: String,
        /// Why it was refused.
        #[source]
        source: PartitionError,
    },
    /// The rendered output cannot be run as is.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which part (`program`, `args[1]`, `env PORT`, a config file path).
        what: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// What the supervisor runs for one instance, fully rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The program (absolute path or looked up in `PATH`).
    pub program: String,
    /// The arguments after rendering, `argv[1..]`.
    pub args: Vec<String>,
    /// Environment variables, sorted by name, names unique.
    pub env: Vec<(String, String)>,
    /// Config files: path relative to the partition, contents.
    pub files: Vec<(String, String)>,
    /// sha256 of a canonical encoding of all the above.
    pub hash: [u8; 32],
}

/// Replaces every `{{ key }}` in `template` with `lookup(key)`.
pub fn render(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece? {
            Piece::Text(t) => out.push_str(t),
            Piece::Key(k) => {
                out.push_str(&lookup(k).ok_or_else(|| RenderError::Missing(k.to_owned()))?)
            }
        }
    }
    Ok(out)
}

/// Renders `req`; `artifact` is the installed tree of the artifact variant it runs
/// (ignored for `exec:`), `published(other, key)` gives instance `other`'s connection
/// parameter `key`.
pub fn render_instance(
    req: &InstanceRequest,
    artifact: Option<&Path>,
    published: &dyn Fn(&str, &str) -> Option<String>,
) -> Result<Rendered, RenderError> {
    let lookup = |key: &str| -> Option<String> {
        if let Some(v) = req.parameters.get(key) {
            return Some(v.clone());
        }
        // `node/instance.key`: a peer's instance (its node's name may hold dots).
        if let Some((node, instance, k)) = hedge_wire::template::peer_key(key) {
            return published(&format!("{node}/{instance}"), k);
        }
        let (other, k) = key.split_once('.')?;
        published(other, k)
    };
    let mut software_dir = None;
    let program = match &req.software {
        SoftwareRelease::Exec(p) => render(p, &lookup)?,
        SoftwareRelease::Artifact { entry, .. } => {
            let dir = artifact.ok_or(RenderError::ArtifactMissing)?;
            check_rel_path(entry).map_err(|source| RenderError::Path {
                path: entry.chars().take(128).collect(),
                source,
            })?;
            let dir = dir
                .to_str()
                .ok_or_else(|| invalid("artifact directory", "not UTF-8"))?;
            software_dir = Some(dir.to_owned());
            format!("{}/{entry}", dir.trim_end_matches('/'))
        }
    };
    if program.is_empty() {
        return Err(invalid("program", "empty"));
    }
    no_nul("program", &program)?;

    let mut args = Vec::with_capacity(req.args.len());
    for (i, a) in req.args.iter().enumerate() {
        let a = render(a, &lookup)?;
        no_nul(&format!("args[{i}]"), &a)?;
        args.push(a);
    }

    let mut env = BTreeMap::new();
    for (k, v) in &req.parameters {
        let name = env_name(k);
        if name.is_empty() {
            continue;
        }
        no_nul(&format!("env {name}"), v)?;
        env.insert(name, v.clone());
    }
    // Last, so a parameter named `hedge_instance` cannot hide it.
    env.insert("HEDGE_INSTANCE".to_owned(), req.name.as_str().to_owned());
    if let Some(dir) = software_dir {
        env.insert("HEDGE_SOFTWARE".to_owned(), dir);
    }

    let mut files = Vec::with_capacity(req.config_files.len());
    let mut seen = BTreeSet::new();
    for cf in &req.config_files {
        check_rel_path(&cf.path).map_err(|source| RenderError::Path {
            path: cf.path.chars().take(128).collect(),
            source,
        })?;
        if !seen.insert(cf.path.as_str()) {
            return Err(invalid(&cf.path, "config file listed twice"));
        }
        files.push((cf.path.clone(), render(&cf.template, &lookup)?));
    }

    let env: Vec<(String, String)> = env.into_iter().collect();
    let hash = digest(&program, &args, &env, &files);
    Ok(Rendered {
        program,
        args,
        env,
        files,
        hash,
    })
}

/// A parameter name as an environment variable: upper case, `[^A-Z0-9_]` → `_`.
pub(crate) fn env_name(k: &str) -> String {
    k.chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn invalid(what: &str, reason: &'static str) -> RenderError {
    RenderError::Invalid {
        what: what.chars().take(128).collect(),
        reason,
    }
}

fn no_nul(what: &str, s: &str) -> Result<(), RenderError> {
    if s.contains('\0') {
        return Err(invalid(what, "contains a NUL byte"));
    }
    Ok(())
}

/// sha256 over a length-prefixed encoding, so no two different outputs share an input.
fn digest(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    files: &[(String, String)],
) -> [u8; 32] {
    fn put(h: &mut Sha256, b: &[u8]) {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    let mut h = Sha256::new();
    put(&mut h, b"hedge-render-v1");
    put(&mut h, program.as_bytes());
    h.update((args.len() as u64).to_le_bytes());
    for a in args {
        put(&mut h, a.as_bytes());
    }
    h.update((env.len() as u64).to_le_bytes());
    for (k, v) in env {
        put(&mut h, k.as_bytes());
        put(&mut h, v.as_bytes());
    }
    h.update((files.len() as u64).to_le_bytes());
    for (p, c) in files {
        put(&mut h, p.as_bytes());
        put(&mut h, c.as_bytes());
    }
    h.finalize().into()
}

/// The pieces of `template`, each syntax error as a [`RenderError::Syntax`].
fn pieces(template: &str) -> impl Iterator<Item = Result<Piece<'_>, RenderError>> {
    Pieces::new(template).map(move |p| {
        p.map_err(|e| RenderError::Syntax {
            offset: e.offset,
            near: template[e.offset..].chars().take(24).collect(),
            reason: e.reason,
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hedge_wire::types::{
        ConfigFile, Limits, Name, PromiseCheck, PromiseSpec, RequestedState, RestartPolicy,
    };

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn req(params: &[(&str, &str)]) -> InstanceRequest {
        InstanceRequest {
            name: Name::new("web").unwrap(),
            software: SoftwareRelease::Exec("/usr/bin/{{prog}}".into()),
            args: vec![
                "--port={{ port }}".into(),
                "--db={{db.address}}:{{ db.port }}".into(),
            ],
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config_files: vec![ConfigFile {
                path: "etc/app.conf".into(),
                template: "listen {{port}}\nupstream {{db.address}}\n".into(),
            }],
            promises: vec![],
            limits: Limits::default(),
            restart: RestartPolicy::default(),
            state: RequestedState::Started,
        }
    }

    fn render_instance_t(
        r: &InstanceRequest,
        published: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Result<Rendered, RenderError> {
        render_instance(r, None, published)
    }

    fn published(other: &str, key: &str) -> Option<String> {
        match (other, key) {
            ("db", "address") => Some("10.0.0.2".into()),
            ("db", "port") => Some("5432".into()),
            _ => None,
        }
    }

    #[test]
    fn substitution_and_spaces() {
        let l = vars(&[("a", "1"), ("b.c", "2"), ("x-y_z", "3")]);
        assert_eq!(
            render("{{a}}+{{ a }}={{\tb.c }} {{x-y_z}}", &l).unwrap(),
            "1+1=2 3"
        );
        assert_eq!(render("no braces here", &l).unwrap(), "no braces here");
        assert_eq!(render("", &l).unwrap(), "");
        assert_eq!(
            render("a { b } c }} d {x}", &l).unwrap(),
            "a { b } c }} d {x}"
        );
        assert_eq!(render("{{a}}}", &l).unwrap(), "1}");
        assert_eq!(render("é{{a}}ü", &l).unwrap(), "é1ü");
        // Values are not rendered again.
        assert_eq!(render("{{v}}", &vars(&[("v", "{{a}}")])).unwrap(), "{{a}}");
    }

    #[test]
    fn missing_key() {
        let l = vars(&[("a", "1")]);
        assert!(
            matches!(render("x {{ nope }} y", &l), Err(RenderError::Missing(k)) if k == "nope")
        );
    }

    #[test]
    fn syntax_errors() {
        let l = vars(&[("a", "1")]);
        for (t, at) in [
            ("x {{a", 2),
            ("{{", 0),
            ("{{}}", 0),
            ("{{   }}", 0),
            ("{{a b}}", 0),
            ("{{a\\b}}", 0),
            ("ok {{a}} {{{a}}}", 9),
            ("{{ä}}", 0),
        ] {
            match render(t, &l) {
                Err(RenderError::Syntax { offset, .. }) => assert_eq!(offset, at, "{t:?}"),
                other => panic!("{t:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn renders_instance_with_connection_parameters() {
        let r = render_instance_t(
            &req(&[("prog", "app"), ("port", "8080"), ("tls-mode", "on")]),
            &published,
        )
        .unwrap();
        assert_eq!(r.program, "/usr/bin/app");
        assert_eq!(r.args, vec!["--port=8080", "--db=10.0.0.2:5432"]);
        assert_eq!(
            r.env,
            vec![
                ("HEDGE_INSTANCE".to_owned(), "web".to_owned()),
                ("PORT".to_owned(), "8080".to_owned()),
                ("PROG".to_owned(), "app".to_owned()),
                ("TLS_MODE".to_owned(), "on".to_owned()),
            ]
        );
        assert_eq!(
            r.files,
            vec![(
                "etc/app.conf".to_owned(),
                "listen 8080\nupstream 10.0.0.2\n".to_owned()
            )]
        );
    }

    #[test]
    fn own_parameter_wins_over_connection_parameter() {
        let r = render_instance_t(
            &req(&[("prog", "app"), ("port", "1"), ("db.address", "local")]),
            &published,
        )
        .unwrap();
        assert_eq!(r.args[1], "--db=local:5432");
        let refs = references(&req(&[("db.address", "local")]));
        assert_eq!(
            refs,
            BTreeSet::from(["db".to_owned()]),
            "db.port still comes from db"
        );
        let refs = references(&req(&[("db.address", "l"), ("db.port", "1")]));
        assert!(refs.is_empty());
    }

    #[test]
    fn missing_connection_parameter_is_missing() {
        let none = |_: &str, _: &str| None;
        let e = render_instance_t(&req(&[("prog", "app"), ("port", "1")]), &none).unwrap_err();
        assert!(matches!(e, RenderError::Missing(k) if k == "db.address"));
    }

    #[test]
    fn hash_changes_iff_output_changes() {
        let base = &[("prog", "app"), ("port", "8080")];
        let a = render_instance_t(&req(base), &published).unwrap();
        let b = render_instance_t(&req(base), &published).unwrap();
        assert_eq!(a.hash, b.hash);
        // A connection parameter the request does not use changes nothing.
        let published_extra = |o: &str, k: &str| {
            if (o, k) == ("db", "user") {
                Some("x".into())
            } else {
                published(o, k)
            }
        };
        assert_eq!(
            render_instance_t(&req(base), &published_extra)
                .unwrap()
                .hash,
            a.hash
        );
        // A used connection parameter changes it.
        let published_moved = |o: &str, k: &str| {
            if (o, k) == ("db", "port") {
                Some("5433".into())
            } else {
                published(o, k)
            }
        };
        assert_ne!(
            render_instance_t(&req(base), &published_moved)
                .unwrap()
                .hash,
            a.hash
        );
        // Any parameter change does (parameters are in the environment).
        assert_ne!(
            render_instance_t(&req(&[("prog", "app"), ("port", "8081")]), &published)
                .unwrap()
                .hash,
            a.hash
        );
        // Field boundaries are part of the hash.
        let mut r1 = req(base);
        r1.args = vec!["ab".into()];
        let mut r2 = req(base);
        r2.args = vec!["a".into(), "b".into()];
        assert_ne!(
            render_instance_t(&r1, &published).unwrap().hash,
            render_instance_t(&r2, &published).unwrap().hash
        );
    }

    #[test]
    fn config_path_traversal_refused() {
        for bad in ["../etc/passwd", "/etc/passwd", "etc/../../x", ""] {
            let mut r = req(&[("prog", "app"), ("port", "1")]);
            r.config_files[0].path = bad.into();
            assert!(
                matches!(
                    render_instance_t(&r, &published),
                    Err(RenderError::Path { .. })
                ),
                "{bad:?}"
            );
        }
        let mut r = req(&[("prog", "app"), ("port", "1")]);
        r.config_files.push(r.config_files[0].clone());
        assert!(matches!(
            render_instance_t(&r, &published),
            Err(RenderError::Invalid { .. })
        ));
    }

    #[test]
    fn artifacts_run_their_entry_from_the_cache_and_nul_is_refused() {
        let mut r = req(&[("prog", "app"), ("port", "1")]);
        r.software = SoftwareRelease::Artifact {
            variants: vec![hedge_wire::ArtifactVariant {
                target: "*".into(),
                sha256: [0; 32],
            }],
            entry: "bin/app".into(),
        };
        assert!(matches!(
            render_instance(&r, None, &published),
            Err(RenderError::ArtifactMissing)
        ));
        let a = render_instance(
            &r,
            Some(Path::new("/var/lib/hedge/software/aa")),
            &published,
        )
        .unwrap();
        assert_eq!(a.program, "/var/lib/hedge/software/aa/bin/app");
        assert!(a
            .env
            .contains(&("HEDGE_SOFTWARE".into(), "/var/lib/hedge/software/aa".into())));
        // Another variant (another cache directory) is another rendering: a restart.
        let b = render_instance(
            &r,
            Some(Path::new("/var/lib/hedge/software/bb")),
            &published,
        )
        .unwrap();
        assert_ne!(a.hash, b.hash);
        if let SoftwareRelease::Artifact { entry, .. } = &mut r.software {
            *entry = "../../bin/sh".into();
        }
        assert!(matches!(
            render_instance(&r, Some(Path::new("/c")), &published),
            Err(RenderError::Path { .. })
        ));
        let r = req(&[("prog", "app"), ("port", "1\0")]);
        assert!(matches!(
            render_instance_t(&r, &published),
            Err(RenderError::Invalid { .. })
        ));
    }

    #[test]
    fn references_lists_other_instances() {
        let mut r = req(&[("prog", "app"), ("port", "1")]);
        r.promises.push(PromiseSpec {
            name: Name::new("up").unwrap(),
            check: PromiseCheck::Tcp {
                address: "{{cache.host}}:{{ port }}".into(),
            },
            interval_ms: 1000,
            timeout_ms: 100,
            threshold: 3,
        });
        r.args.push("{{Bad.Name}} {{broken".into());
        assert_eq!(
            references(&r),
            BTreeSet::from(["cache".to_owned(), "db".to_owned()])
        );
    }

    #[test]
    fn peer_parameters_render_and_are_listed_apart() {
        let mut r = req(&[("prog", "app"), ("port", "1")]);
        r.args
            .push("--peer={{ node-2/db.port }},{{gw.1/db.host}}".into());
        // A peer reference is no local instance's, and the master never imports it.
        assert_eq!(
            references(&r),
            BTreeSet::from(["db".to_owned()]),
            "node-2/db is not an instance of this node"
        );
        let n = |s: &str| Name::new(s).unwrap();
        assert_eq!(
            peer_references(&r),
            BTreeSet::from([(n("node-2"), n("db")), (n("gw.1"), n("db"))])
        );
        let lookup = |other: &str, key: &str| match (other, key) {
            ("node-2/db", "port") => Some("7000".to_owned()),
            ("gw.1/db", "host") => Some("10.1.0.9".to_owned()),
            _ => published(other, key),
        };
        let out = render_instance_t(&r, &lookup).unwrap();
        assert_eq!(out.args.last().unwrap(), "--peer=7000,10.1.0.9");
        // Missing on the peer: a missing key, never an empty value.
        let err = render_instance_t(&r, &published).unwrap_err();
        assert!(matches!(err, RenderError::Missing(k) if k == "node-2/db.port"));
        // Not a peer key: bad names or no key.
        assert!(hedge_wire::template::peer_key("Node/db.port").is_none());
        assert!(hedge_wire::template::peer_key("node/db.").is_none());
        assert!(hedge_wire::template::peer_key("node/db").is_none());
    }
}
