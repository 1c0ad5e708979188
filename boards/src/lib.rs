//! Board profiles (data embedded in the binary) and their detection.
//!
//! Contract:
//! - A profile is one TOML file in `boards/profiles/`, embedded with `include_str!` and parsed
//!   once, on first use. [`profiles`] lists them in match order: specific boards first (an
//!   eMMC variant before its SD sibling), the `generic` fallback last. A bad embedded file is a
//!   bug that the unit tests catch; [`parse_profile`] reports it as a [`ProfileError`].
//! - [`detect_from`] is pure and never fails: the device-tree model first, then the
//!   `/proc/cpuinfo` lines `Model`, `Revision` (a Raspberry Pi's board type code) and
//!   `Hardware` (the SoC), else the `generic` profile. Patterns match case-insensitively as
//!   substrings. [`detect`] feeds it `/proc/device-tree/model` and `/proc/cpuinfo`.
//! - A profile's `defaults` are the node's starting values for that board (its config may
//!   override them), sized for the board's smallest RAM variant and its storage: SD cards wear
//!   out, so they get fewer, larger writes than eMMC.
//!
//! Driven by the `hedge` binary: `hedge node init` is meant to take its defaults from
//! [`detect`], and `BoardProfile` serializes (serde) for a `--json` view.
//!
//! The crate is this one file (the profile type, parsing, the embedded profiles and
//! detection) plus the data in `boards/profiles/`. Where it sits in hedge:
//! `docs/architecture.md`.

use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The embedded profile files, in match order; `generic` must be last.
const PROFILE_FILES: &[(&str, &str)] = &[
    ("rpi5.toml", include_str!("../profiles/rpi5.toml")),
    ("rpi4b.toml", include_str!("../profiles/rpi4b.toml")),
    ("rpi3b.toml", include_str!("../profiles/rpi3b.toml")),
    ("rpizero2w.toml", include_str!("../profiles/rpizero2w.toml")),
    (
        "olimex-a20-lime2-emmc.toml",
        include_str!("../profiles/olimex-a20-lime2-emmc.toml"),
    ),
    (
        "olimex-a20-lime2.toml",
        include_str!("../profiles/olimex-a20-lime2.toml"),
    ),
    (
        "olimex-a64-emmc.toml",
        include_str!("../profiles/olimex-a64-emmc.toml"),
    ),
    (
        "olimex-a64.toml",
        include_str!("../profiles/olimex-a64.toml"),
    ),
    ("generic.toml", include_str!("../profiles/generic.toml")),
];

/// Where the device tree names the board (a symlink to `/sys/firmware/devicetree/base`).
pub const DEVICE_TREE_MODEL: &str = "/proc/device-tree/model";
/// The kernel's CPU description, with `Model`/`Revision`/`Hardware` lines on ARM boards.
pub const CPUINFO: &str = "/proc/cpuinfo";

/// The kind of storage the board boots from, which sets how often the node may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A (micro)SD card: wears out fastest; batch writes.
    Sd,
    /// Soldered eMMC.
    Emmc,
    /// Not known (the generic profile).
    Unknown,
}

/// What identifies a board; any one pattern that matches selects the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matches {
    /// Substrings of the device-tree model or of cpuinfo's `Model` line.
    #[serde(default)]
    pub model: Vec<String>,
    /// Substrings of cpuinfo's `Hardware` line (names a SoC, so it is a weaker match).
    #[serde(default)]
    pub hardware: Vec<String>,
    /// Raspberry Pi board type codes: bits 4..12 of a new-style cpuinfo `Revision`.
    #[serde(default)]
    pub pi_revision_type: Vec<u32>,
}

impl Matches {
    fn is_empty(&self) -> bool {
        self.model.is_empty() && self.hardware.is_empty() && self.pi_revision_type.is_empty()
    }
}

/// The node's defaults on a board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDefaults {
    /// How many instances the node accepts.
    pub max_instances: u32,
    /// Bytes the outbox may hold before the oldest records are dropped.
    pub outbox_quota_bytes: u64,
    /// sled's page cache, in bytes.
    pub sled_cache_bytes: u64,
    /// How often sled flushes to storage, in milliseconds.
    pub flush_interval_ms: u64,
}

/// One board: its hardware facts, how to recognise it, and the node's defaults on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Stable identifier, the file's stem (e.g. `rpi4b`).
    pub id: String,
    /// Human name.
    pub name: String,
    /// The Rust target triple to build for it; `None` for the generic profile.
    #[serde(default)]
    pub target: Option<String>,
    /// CPU cores; `None` when unknown.
    #[serde(default)]
    pub cores: Option<u32>,
    /// RAM of the smallest variant, in MB; `None` when unknown.
    #[serde(default)]
    pub ram_mb: Option<u32>,
    /// The storage it boots from.
    pub storage: StorageKind,
    /// The file with the SoC temperature in millidegrees Celsius.
    #[serde(default)]
    pub thermal_zone: Option<String>,
    /// How to recognise it; empty only for the generic profile.
    #[serde(rename = "match", default)]
    pub matches: Matches,
    /// The node's defaults on it.
    pub defaults: NodeDefaults,
}

/// A profile file that does not parse or makes no sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileError {
    /// Not valid TOML, or not a profile's fields.
    Parse {
        /// The file's name.
        file: String,
        /// The TOML parser's message.
        message: String,
    },
    /// Parsed, but a value is not acceptable.
    Invalid {
        /// The file's name.
        file: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse { file, message } => write!(f, "board profile {file}: {message}"),
            Self::Invalid { file, reason } => write!(f, "board profile {file}: {reason}"),
        }
    }
}

impl std::error::Error for ProfileError {}

/// Parse and check one profile file; `file` names it in errors.
pub fn parse_profile(file: &str, text: &str) -> Result<BoardProfile, ProfileError> {
    let p: BoardProfile = toml::from_str(text).map_err(|e| ProfileError::Parse {
        file: file.to_owned(),
        message: e.message().to_owned(),
    })?;
    let d = &p.defaults;
    let reason = if p.id.is_empty() || !p.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Some("id must be non-empty ASCII letters, digits and '-'")
    } else if d.max_instances == 0
        || d.outbox_quota_bytes == 0
        || d.sled_cache_bytes == 0
        || d.flush_interval_ms == 0
    {
        Some("every default must be positive")
    } else if p
        .matches
        .model
        .iter()
        .chain(&p.matches.hardware)
        .any(String::is_empty)
    {
        Some("an empty pattern would match every board")
    } else if p.matches.is_empty() != (p.id == "generic") {
        Some("every profile but `generic` needs a match pattern")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ProfileError::Invalid {
            file: file.to_owned(),
            reason,
        }),
        None => Ok(p),
    }
}

/// Every embedded profile, in match order, `generic` last.
pub fn profiles() -> &'static [BoardProfile] {
    static PROFILES: OnceLock<Vec<BoardProfile>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        PROFILE_FILES
            .iter()
            .map(|(file, text)| {
                parse_profile(file, text).unwrap_or_else(|e| panic!("embedded {e} (a bug)"))
            })
            .collect()
    })
}

/// The fallback profile, for boards no other profile matches.
pub fn generic() -> &'static BoardProfile {
    // PROFILE_FILES ends with generic.toml, and `profiles` parses every entry.
    let all = profiles();
    &all[all.len() - 1]
}

/// The profile with this id.
pub fn by_id(id: &str) -> Option<&'static BoardProfile> {
    profiles().iter().find(|p| p.id == id)
}

/// Choose the profile for a device-tree model and a `/proc/cpuinfo` text (pure).
pub fn detect_from(model: Option<&str>, cpuinfo: Option<&str>) -> &'static BoardProfile {
    let field = |key: &str| cpuinfo.and_then(|text| cpuinfo_field(text, key));
    let by_pattern = |value: Option<&str>, patterns: fn(&Matches) -> &[String]| {
        let value = value?.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        let value = value.to_ascii_lowercase();
        profiles().iter().find(|p| {
            patterns(&p.matches)
                .iter()
                .any(|pat| value.contains(&pat.to_ascii_lowercase()))
        })
    };
    let by_revision = || {
        let kind = pi_revision_type(field("Revision")?)?;
        profiles()
            .iter()
            .find(|p| p.matches.pi_revision_type.contains(&kind))
    };
    by_pattern(model, |m| &m.model)
        .or_else(|| by_pattern(field("Model"), |m| &m.model))
        .or_else(by_revision)
        .or_else(|| by_pattern(field("Hardware"), |m| &m.hardware))
        .unwrap_or_else(generic)
}

/// Detect this machine's board from [`DEVICE_TREE_MODEL`] and [`CPUINFO`]; files that are
/// missing or unreadable count as absent.
pub fn detect() -> &'static BoardProfile {
    let model = std::fs::read(DEVICE_TREE_MODEL).ok().map(|bytes| {
        String::from_utf8_lossy(&bytes)
            .trim_end_matches('\0')
            .to_owned()
    });
    let cpuinfo = std::fs::read_to_string(CPUINFO).ok();
    detect_from(model.as_deref(), cpuinfo.as_deref())
}

/// The value of the first `key : value` line of a cpuinfo text.
fn cpuinfo_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key)
            .then(|| v.trim())
            .filter(|v| !v.is_empty())
    })
}

/// The board type of a new-style Raspberry Pi revision code (bit 23 set), e.g. `a020d3`
/// (3B+) gives 0x0d; `None` for old-style codes and non-hex text.
fn pi_revision_type(revision: &str) -> Option<u32> {
    let code = u32::from_str_radix(revision.trim().trim_start_matches("0x"), 16).ok()?;
    (code & (1 << 23) != 0).then_some((code >> 4) & 0xff)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn id(model: Option<&str>, cpuinfo: Option<&str>) -> &'static str {
        &detect_from(model, cpuinfo).id
    }

    /// A 64-bit Raspberry Pi OS cpuinfo: no `Hardware` line.
    fn pi_cpuinfo(revision: &str, model: &str) -> String {
        format!(
            "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n\
             CPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n\
             Revision\t: {revision}\nSerial\t\t: 10000000a1b2c3d4\nModel\t\t: {model}\n"
        )
    }

    #[test]
    fn every_embedded_profile_parses_and_is_consistent() {
        let all = profiles();
        assert_eq!(all.len(), PROFILE_FILES.len());
        let mut ids = HashSet::new();
        for (p, (file, _)) in all.iter().zip(PROFILE_FILES) {
            assert_eq!(format!("{}.toml", p.id), *file, "id is the file stem");
            assert!(ids.insert(p.id.as_str()), "duplicate id {}", p.id);
            assert_eq!(p.matches.is_empty(), p.id == "generic", "{}", p.id);
            if p.id != "generic" {
                assert!(p.target.is_some() && p.cores.is_some() && p.ram_mb.is_some());
                assert_ne!(p.storage, StorageKind::Unknown);
            }
        }
        assert_eq!(generic().id, "generic");
        assert_eq!(by_id("rpi4b").map(|p| p.cores), Some(Some(4)));
        assert!(by_id("nope").is_none());
    }

    #[test]
    fn device_tree_models() {
        let cases = [
            ("Raspberry Pi 5 Model B Rev 1.0", "rpi5"),
            ("Raspberry Pi 4 Model B Rev 1.4", "rpi4b"),
            ("Raspberry Pi 4 Model B Rev 1.1", "rpi4b"),
            ("Raspberry Pi 3 Model B Plus Rev 1.3", "rpi3b"),
            ("Raspberry Pi 3 Model B Rev 1.2", "rpi3b"),
            ("Raspberry Pi Zero 2 W Rev 1.0", "rpizero2w"),
            ("Olimex A20-OLinuXino-LIME2", "olimex-a20-lime2"),
            ("Olimex A20-OLinuXino-LIME2-eMMC", "olimex-a20-lime2-emmc"),
            ("Olimex A64-OLinuXino", "olimex-a64"),
            ("Olimex A64-OLinuXino-eMMC", "olimex-a64-emmc"),
        ];
        for (model, want) in cases {
            assert_eq!(id(Some(model), None), want, "{model}");
            // As read from /proc/device-tree/model: NUL-terminated.
            assert_eq!(id(Some(&format!("{model}\0")), None), want, "{model}\\0");
        }
    }

    #[test]
    fn cpuinfo_model_line_when_there_is_no_device_tree() {
        let text = pi_cpuinfo("c03114", "Raspberry Pi 4 Model B Rev 1.4");
        assert_eq!(id(None, Some(&text)), "rpi4b");
        // The device tree wins over cpuinfo.
        assert_eq!(
            id(Some("Raspberry Pi 5 Model B Rev 1.0"), Some(&text)),
            "rpi5"
        );
    }

    #[test]
    fn cpuinfo_revision_codes() {
        let cases = [
            ("d04170", "rpi5"),      // 5, 8 GB
            ("c04170", "rpi5"),      // 5, 4 GB
            ("c03114", "rpi4b"),     // 4B 1.4, 4 GB
            ("a03111", "rpi4b"),     // 4B 1.1, 1 GB
            ("a020d3", "rpi3b"),     // 3B+
            ("a02082", "rpi3b"),     // 3B
            ("2a22082", "rpi3b"),    // 3B, warranty bit (25) set
            ("902120", "rpizero2w"), // Zero 2 W
            ("a03140", "generic"),   // Compute Module 4: no profile
            ("000e", "generic"),     // old-style (Pi 1 B)
            ("zzz", "generic"),
        ];
        for (rev, want) in cases {
            let text = format!("processor\t: 0\nRevision\t: {rev}\nSerial\t\t: 0000\n");
            assert_eq!(id(None, Some(&text)), want, "{rev}");
        }
    }

    #[test]
    fn cpuinfo_hardware_line_of_a_32_bit_kernel() {
        let a20 = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\n\
                   Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt\n\n\
                   Hardware\t: Allwinner sun7i (A20) Family\nRevision\t: 0000\n\
                   Serial\t\t: 1651660f0a4b2e25\n";
        assert_eq!(id(None, Some(a20)), "olimex-a20-lime2");
        let bcm = "processor\t: 0\nHardware\t: BCM2835\nRevision\t: a02082\n\
                   Model\t\t: Raspberry Pi 3 Model B Rev 1.2\n";
        assert_eq!(id(None, Some(bcm)), "rpi3b");
    }

    #[test]
    fn unknown_boards_fall_back_to_generic() {
        assert_eq!(id(None, None), "generic");
        assert_eq!(id(Some(""), Some("")), "generic");
        assert_eq!(id(Some("Pine64 PinePhone (1.2)"), None), "generic");
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\n";
        assert_eq!(id(None, Some(x86)), "generic");
        assert_eq!(detect_from(None, None).storage, StorageKind::Unknown);
    }

    #[test]
    fn defaults_fit_the_board() {
        let get = |id: &str| by_id(id).map(|p| p.defaults.clone());
        let (zero, pi5) = (get("rpizero2w"), get("rpi5"));
        let (Some(zero), Some(pi5)) = (zero, pi5) else {
            panic!("profiles missing")
        };
        assert!(zero.sled_cache_bytes < pi5.sled_cache_bytes);
        assert!(zero.max_instances < pi5.max_instances);
        // SD cards get rarer flushes than eMMC.
        for p in profiles() {
            if p.storage == StorageKind::Emmc {
                let sd = profiles()
                    .iter()
                    .filter(|q| q.storage == StorageKind::Sd)
                    .map(|q| q.defaults.flush_interval_ms)
                    .min();
                assert!(Some(p.defaults.flush_interval_ms) < sd, "{}", p.id);
            }
        }
    }

    #[test]
    fn json_uses_the_file_names() {
        let json = serde_json::to_value(detect_from(Some("Raspberry Pi 5 Model B Rev 1.0"), None));
        let json = json.unwrap_or_default();
        assert_eq!(json["id"], "rpi5");
        assert_eq!(json["storage"], "sd");
        assert_eq!(json["match"]["pi_revision_type"][0], 0x17);
        assert_eq!(json["defaults"]["flush_interval_ms"], 5000);
    }

    #[test]
    fn bad_profiles_are_rejected() {
        let good = PROFILE_FILES[0].1;
        assert!(parse_profile("x", good).is_ok());
        let unknown_field = format!("{good}\nextra = 1\n");
        assert!(matches!(
            parse_profile("x", &unknown_field),
            Err(ProfileError::Parse { .. })
        ));
        let zero = good.replace("max_instances = 32", "max_instances = 0");
        let err = parse_profile("x.toml", &zero).err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("board profile x.toml: every default must be positive".to_owned())
        );
        let empty = good.replace("model = [\"Raspberry Pi 5 Model B\"]", "model = [\"\"]");
        assert!(matches!(
            parse_profile("x", &empty),
            Err(ProfileError::Invalid { .. })
        ));
        let no_pattern = good.replace("model = [\"Raspberry Pi 5 Model B\"]", "model = []");
        let no_pattern = no_pattern.replace("pi_revision_type = [0x17]", "");
        assert!(matches!(
            parse_profile("x", &no_pattern),
            Err(ProfileError::Invalid { .. })
        ));
    }

    #[test]
    fn detect_reads_this_machine() {
        // Whatever this machine is, detection answers with one of the profiles.
        let p = detect();
        assert!(profiles().iter().any(|q| std::ptr::eq(p, q)));
    }
}
