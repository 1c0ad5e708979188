//! Bounded sequence and map deserializers, used through `#[serde(deserialize_with)]`
//! on the collection fields of [`crate::types`].
//!
//! Contract: a sequence or map longer than its [`crate::limits`] bound fails to decode
//! as soon as the decoder sees its length (or its `max + 1`-th element), and the length
//! a peer claims never drives an allocation beyond [`PREALLOC_BYTES`]: vectors grow
//! only with the elements actually decoded. serde's own `Vec` impl would preallocate up
//! to 1 MiB on a claimed length, which a 4 KiB frame can ask for.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

use crate::limits::{
    MAX_ARGS, MAX_CONFIG_FILES, MAX_IMPORTS, MAX_INSTANCES, MAX_PARAMETERS, MAX_PROMISES,
    MAX_RECORDS, MAX_VARIANTS,
};
use crate::types::{
    ArtifactVariant, ConfigFile, Import, InstanceRequest, InstanceTerms, PromiseSpec, Record,
};

/// Most bytes a vector preallocates on the strength of a claimed length.
pub(crate) const PREALLOC_BYTES: usize = 4 * 1024;

struct SeqVisitor<T> {
    max: usize,
    what: &'static str,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let hint = seq.size_hint().unwrap_or(0);
        if hint > self.max {
            return Err(A::Error::invalid_length(hint, &self));
        }
        let cap = hint.min(PREALLOC_BYTES / core::mem::size_of::<T>().max(1));
        let mut out = Vec::with_capacity(cap);
        while let Some(item) = seq.next_element()? {
            if out.len() == self.max {
                return Err(A::Error::invalid_length(self.max + 1, &self));
            }
            out.push(item);
        }
        Ok(out)
    }
}

pub(crate) fn seq<'de, D, T>(d: D, max: usize, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(SeqVisitor {
        max,
        what,
        _t: PhantomData,
    })
}

struct MapVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for MapVisitor {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} parameters", self.max)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let hint = map.size_hint().unwrap_or(0);
        if hint > self.max {
            return Err(A::Error::invalid_length(hint, &self));
        }
        let mut out = BTreeMap::new();
        // Count entries, not keys: duplicate keys must not let a peer run the decoder
        // over an unbounded number of entries.
        let mut entries = 0usize;
        while let Some((k, v)) = map.next_entry::<String, String>()? {
            entries += 1;
            if entries > self.max {
                return Err(A::Error::invalid_length(entries, &self));
            }
            if out.insert(k, v).is_some() {
                return Err(A::Error::custom("duplicate parameter key"));
            }
        }
        Ok(out)
    }
}

pub(crate) fn parameters<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    d.deserialize_map(MapVisitor {
        max: MAX_PARAMETERS,
    })
}

pub(crate) fn args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    seq(d, MAX_ARGS, "arguments")
}

pub(crate) fn config_files<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ConfigFile>, D::Error> {
    seq(d, MAX_CONFIG_FILES, "config files")
}

pub(crate) fn promises<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PromiseSpec>, D::Error> {
    seq(d, MAX_PROMISES, "promises")
}

pub(crate) fn instances<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<InstanceRequest>, D::Error> {
    seq(d, MAX_INSTANCES, "instances")
}

pub(crate) fn terms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<InstanceTerms>, D::Error> {
    seq(d, MAX_INSTANCES, "instance terms")
}

pub(crate) fn imports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Import>, D::Error> {
    seq(d, MAX_IMPORTS, "imports")
}

pub(crate) fn backups<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::backup::BackupPolicy>, D::Error> {
    seq(d, crate::backup::MAX_BACKUP_ENTRIES, "backup policies")
}

pub(crate) fn restores<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::backup::RestoreDirective>, D::Error> {
    seq(d, crate::backup::MAX_BACKUP_ENTRIES, "restore directives")
}

pub(crate) fn backup_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    seq(d, crate::backup::MAX_BACKUP_PATHS, "backup paths")
}

pub(crate) fn root<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    bytes(d, crate::backup::MAX_ROOT)
}

pub(crate) fn records<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Record>, D::Error> {
    seq(d, MAX_RECORDS, "records")
}

pub(crate) fn fetch<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<crate::Name>, D::Error> {
    seq(d, crate::mesh::MAX_CARRIED, "nodes")
}

pub(crate) fn variants<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ArtifactVariant>, D::Error> {
    seq(d, MAX_VARIANTS, "artifact variants")
}

struct BytesVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} bytes", self.max)
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        if v.len() > self.max {
            return Err(E::invalid_length(v.len(), &self));
        }
        Ok(v.to_vec())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<u8>, A::Error> {
        SeqVisitor {
            max: self.max,
            what: "bytes",
            _t: PhantomData,
        }
        .visit_seq(seq)
    }
}

/// A byte string of at most `max` bytes. postcard writes a `Vec<u8>` as a length and
/// the bytes, which it reads back as one borrowed slice: no per-byte decoding, and
/// nothing allocated past the bound.
pub(crate) fn bytes<'de, D: Deserializer<'de>>(d: D, max: usize) -> Result<Vec<u8>, D::Error> {
    d.deserialize_bytes(BytesVisitor { max })
}
