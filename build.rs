//! Release builds for Linux put the code an idle node runs together (docs/architecture.md,
//! "Idle memory"). `hot-code.order` (written by `scripts/hot-code`) lists globs of the
//! sections that hold the functions an idle node runs; this script turns it into a
//! linker script that places them in one output section before `.text`, added to the
//! linker's default script (`INSERT`, which GNU ld and LLD both understand). The few
//! hundred functions the idle node runs then share a few dozen pages instead of touching
//! a page or more in every part of the binary. Nothing else about the link changes.
//!
//! Debug builds, other systems, `HEDGE_HOT_CODE=off`, and a checkout without the order
//! link as usual: the order is a matter of memory, not of correctness.
//!
//! Release builds on Linux are stripped here, by the linker (`--strip-all`), not by the
//! profile: `scripts/hot-code` needs the symbols of a build whose functions carry the
//! shipped build's names, and a profile setting changes every crate's metadata, so the
//! hashes in those names. `HEDGE_KEEP_SYMBOLS=1` keeps them; nothing else differs.

use std::path::Path;

#[path = "src/linker_script.rs"]
mod linker_script;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=hot-code.order");
    println!("cargo:rerun-if-changed=src/linker_script.rs");
    println!("cargo:rerun-if-env-changed=HEDGE_HOT_CODE");
    println!("cargo:rerun-if-env-changed=HEDGE_KEEP_SYMBOLS");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("PROFILE") != "release" || var("CARGO_CFG_TARGET_OS") != "linux" {
        return;
    }
    if var("HEDGE_KEEP_SYMBOLS") != "1" {
        println!("cargo:rustc-link-arg-bins=-Wl,--strip-all");
    }
    // `HEDGE_HOT_CODE=off`: the default layout (scripts/hot-code profiles such a build).
    if var("HEDGE_HOT_CODE") == "off" {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("hot-code.order");
    let Ok(globs) = std::fs::read_to_string(&order) else {
        println!(
            "cargo:warning=no {}: hot code is not grouped",
            order.display()
        );
        return;
    };
    let script = Path::new(&var("OUT_DIR")).join("hot-code.ld");
    std::fs::write(&script, linker_script::of(&globs)).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}
