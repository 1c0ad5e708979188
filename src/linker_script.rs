//! The linker script `build.rs` makes of `hot-code.order` (docs/architecture.md, "Idle
//! memory"): one output section, `.text.idle`, of the sections the order's globs name,
//! inserted before `.text` into the linker's default script. Pure; shared by `build.rs`
//! and the binary's unit tests.

use std::fmt::Write as _;

/// The linker script for the globs of `order` (one a line; `#` starts a comment). A
/// glob with a character a linker script would read as syntax is left out. LLVM puts a
/// function it deems cold (`#[cold]`, error paths) in `.text.unlikely.<name>`: each
/// `.text.<name>` glob also takes that section.
pub fn of(order: &str) -> String {
    let mut s = String::from("SECTIONS\n{\n  .text.idle :\n  {\n");
    for glob in order.lines().map(str::trim) {
        let plain = glob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.$*".contains(c));
        if glob.is_empty() || glob.starts_with('#') || !plain {
            continue;
        }
        match glob.strip_prefix(".text.") {
            Some(name) => {
                let _ = writeln!(s, "    *({glob} .text.unlikely.{name})");
            }
            None => {
                let _ = writeln!(s, "    *({glob})");
            }
        }
    }
    s.push_str("  }\n}\nINSERT BEFORE .text;\n");
    s
}

#[cfg(test)]
mod tests {
    use super::of;

    #[test]
    fn globs_become_one_output_section_before_text() {
        let script = of("# a comment\n.text._ZN5tokio4park17h*\n\nring_sha256\n");
        assert_eq!(
            script,
            "SECTIONS\n{\n  .text.idle :\n  {\n    \
             *(.text._ZN5tokio4park17h* .text.unlikely._ZN5tokio4park17h*)\n    \
             *(ring_sha256)\n  }\n}\nINSERT BEFORE .text;\n"
        );
    }

    #[test]
    fn a_glob_a_linker_script_would_misread_is_left_out() {
        for bad in [
            ".text.a)b",
            ".text.a b",
            ".text.a;",
            ".text.\"a\"",
            ".text.a/*",
        ] {
            assert!(!of(bad).contains(".text.a"), "{bad}");
        }
    }
}
