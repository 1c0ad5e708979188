//! The `{{ key }}` template syntax of instance requests, shared by the node (which
//! renders templates) and the master (which finds what a request references on other
//! nodes).
//!
//! Contract: pure. [`Pieces`] splits a template into literal text and keys: `{{ key }}`
//! with spaces or tabs around the key allowed, key = `[A-Za-z0-9_./-]+`; a single `{`, or
//! a `}}` that closes nothing, is literal text; it stops after the first
//! [`TemplateError`]. [`references`] lists the instances whose connection parameters a
//! request consumes: `other` of every `{{other.key}}` whose key is not one of the
//! request's own parameters, in the program (`exec:`), arguments, config files and
//! promises, `other` being a valid [`Name`]. [`peer_references`] lists the `(node,
//! instance)` of every `{{node/instance.key}}`: a peer node's instance, whose parameters
//! the mesh carries signed by that node. Templates with syntax errors are skipped
//! (rendering reports them).

use alloc::borrow::ToOwned;
use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use crate::types::{InstanceRequest, Name, PromiseCheck, SoftwareRelease};

/// A syntax error in a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateError {
    /// Byte offset of the `{{` in the template.
    pub offset: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// A piece of a template.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Literal text.
    Text(&'a str),
    /// The key between `{{` and `}}`, trimmed.
    Key(&'a str),
}

/// The pieces of a template, in order; stops after the first error.
pub struct Pieces<'a> {
    template: &'a str,
    pos: usize,
    failed: bool,
}

impl<'a> Pieces<'a> {
    /// The pieces of `template`.
    pub fn new(template: &'a str) -> Self {
        Pieces {
            template,
            pos: 0,
            failed: false,
        }
    }

    fn syntax(&mut self, offset: usize, reason: &'static str) -> TemplateError {
        self.failed = true;
        TemplateError { offset, reason }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Result<Piece<'a>, TemplateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.template.len() {
            return None;
        }
        let rest = &self.template[self.pos..];
        let Some(open) = rest.find("{{") else {
            self.pos = self.template.len();
            return Some(Ok(Piece::Text(rest)));
        };
        if open > 0 {
            self.pos += open;
            return Some(Ok(Piece::Text(&rest[..open])));
        }
        let offset = self.pos;
        let inner = &rest[2..];
        let Some(close) = inner.find("}}") else {
            return Some(Err(self.syntax(offset, "`{{` without `}}`")));
        };
        let key = inner[..close].trim_matches(|c| c == ' ' || c == '\t');
        if key.is_empty() {
            return Some(Err(self.syntax(offset, "empty key")));
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
        {
            return Some(Err(self.syntax(
                offset,
                "a key may hold only A-Z, a-z, 0-9, '_', '.', '-' and '/'",
            )));
        }
        self.pos += 2 + close + 2;
        Some(Ok(Piece::Key(key)))
    }
}

/// The keys of every template of `req` (program, arguments, config files, promises)
/// that are not `req`'s own parameters; templates with syntax errors are skipped.
fn foreign_keys(req: &InstanceRequest) -> Vec<&str> {
    let mut templates: Vec<&str> = Vec::new();
    if let SoftwareRelease::Exec(p) = &req.software {
        templates.push(p);
    }
    templates.extend(req.args.iter().map(String::as_str));
    templates.extend(req.config_files.iter().map(|c| c.template.as_str()));
    for p in &req.promises {
        match &p.check {
            PromiseCheck::Process => {}
            PromiseCheck::Tcp { address } => templates.push(address),
            PromiseCheck::Http { url, .. } => templates.push(url),
            PromiseCheck::Command { argv } => templates.extend(argv.iter().map(String::as_str)),
            PromiseCheck::File { path, .. } => templates.push(path),
        }
    }
    let mut out = Vec::new();
    for t in templates {
        let Ok(pieces) = Pieces::new(t).collect::<Result<Vec<_>, _>>() else {
            continue;
        };
        for piece in pieces {
            if let Piece::Key(k) = piece {
                if !req.parameters.contains_key(k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// A peer's parameter reference `node/instance.key`, split: `None` unless `node` and
/// `instance` are valid [`Name`]s and `key` is not empty.
pub fn peer_key(key: &str) -> Option<(Name, Name, &str)> {
    let (node, rest) = key.split_once('/')?;
    let (instance, k) = rest.split_once('.')?;
    if k.is_empty() {
        return None;
    }
    Some((Name::new(node).ok()?, Name::new(instance).ok()?, k))
}

/// The instances whose connection parameters `req` consumes (see the module's doc).
/// A key naming a peer's instance (`{{node/instance.key}}`) is not one of them: see
/// [`peer_references`].
pub fn references(req: &InstanceRequest) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for k in foreign_keys(req) {
        if k.contains('/') {
            continue;
        }
        if let Some((other, _)) = k.split_once('.') {
            if Name::new(other).is_ok() {
                out.insert(other.to_owned());
            }
        }
    }
    out
}

/// The instances of peer nodes whose connection parameters `req` consumes, as
/// `(node, instance)`: every `{{node/instance.key}}` of its templates (the mesh carries
/// them, signed by `node`, without the master).
pub fn peer_references(req: &InstanceRequest) -> BTreeSet<(Name, Name)> {
    foreign_keys(req)
        .into_iter()
        .filter_map(peer_key)
        .map(|(n, i, _)| (n, i))
        .collect()
}
