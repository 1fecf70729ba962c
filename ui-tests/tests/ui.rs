//! Compile-fail and pass cases of the macros. Regenerate the `.stderr` snapshots with
//! `TRYBUILD=overwrite cargo test -p tenantry-ui-tests` and review the diff.

#[test]
fn ui() {
    // The snapshots were made with the rustc in RUSTC_VERSION; another rustc may word
    // its part of the messages differently.
    let pinned = include_str!("../RUSTC_VERSION").trim();
    let actual =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
    if !actual.starts_with(pinned) {
        eprintln!(
            "note: UI snapshots were made with `{pinned}`, this is `{}`",
            actual.trim()
        );
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("fail/*.rs");
    t.pass("pass/*.rs");
}
