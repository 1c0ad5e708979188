//! Records the target triple for `NodeInfo` records (the master allocates by it).
fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=HEDGE_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
