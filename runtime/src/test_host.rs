//! For the crate's unit tests that need more of the host than a temp dir (root, cgroup
//! v2): whether such a test can run here.
//!
//! Contract: [`can_run`] returns `possible`; when it is `false` the test is skipped with
//! a line on stderr, except under `CI`, where it panics instead: a test that cannot run
//! in CI is a failure there, never a silent pass. The end-to-end tests have the same
//! rule in `tests/common`.

/// `possible`, or `false` once the skip is said; panics under `CI` when not possible.
pub(crate) fn can_run(possible: bool, what: &str) -> bool {
    if possible {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs {what} and CI is set: it must run here"
    );
    eprintln!("skipped: needs {what}");
    false
}

/// [`can_run`] for tests that need to be root.
pub(crate) fn can_run_as_root(what: &str) -> bool {
    can_run(nix::unistd::geteuid().is_root(), what)
}
