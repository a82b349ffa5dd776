//! The packaged service, end to end: `packaging/build` makes the .deb and
//! the .rpm (with lintian), and `packaging/e2e` installs the .deb into a
//! fresh Debian root made with debootstrap, starts tetherd from the
//! installed unit's command lines, binds a captive with the installed
//! tetherctl, kills its parent, sees the captive go, stops the daemon,
//! purges the package and checks that nothing is left.

use std::process::Command;

use crate::util::is_root;

/// Whether `tool` is on the PATH.
fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_deb_installs_runs_acts_and_purges_cleanly_in_a_fresh_debian_root() {
    if crate::util::backend().is_some_and(|b| b != "pidfd") {
        eprintln!("skipped: the package test runs once, with the pidfd suite");
        return;
    }
    if std::env::var_os("TETHER_TEST_VM").is_some() {
        eprintln!(
            "skipped: in the tests/vm guest: building the packages needs cargo and the \
             build tree, which the read-only root does not offer, and debootstrap needs the network"
        );
        return;
    }
    if !is_root() {
        eprintln!("skipped: installing a package into a chroot needs root");
        return;
    }
    let missing: Vec<&str> = [
        "debootstrap",
        "dpkg-deb",
        "cargo-deb",
        "lintian",
        "rpmbuild",
    ]
    .into_iter()
    .filter(|t| !have(t))
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "skipped: missing {} (packaging/build installs them as root on Debian)",
            missing.join(", ")
        );
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let build = Command::new(format!("{root}/packaging/build"))
        .output()
        .unwrap();
    let build_out = String::from_utf8_lossy(&build.stdout);
    let build_err = String::from_utf8_lossy(&build.stderr);
    assert!(build.status.success(), "{build_out}\n{build_err}");
    // lintian ran and found no error (it would have failed the build).
    assert!(build_out.contains("== lintian"), "{build_out}");
    let version = env!("CARGO_PKG_VERSION");
    let deb = format!("{root}/target/dist/tether_{version}-1_amd64.deb");
    let rpm = format!("{root}/target/dist/tether-{version}-1.x86_64.rpm");
    assert!(std::path::Path::new(&rpm).exists(), "no {rpm}");

    let e2e = Command::new(format!("{root}/packaging/e2e"))
        .arg(&deb)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&e2e.stdout);
    let err = String::from_utf8_lossy(&e2e.stderr);
    if let Some(reason) = out.lines().find_map(|l| l.strip_prefix("SKIP ")) {
        eprintln!("skipped: {reason}");
        return;
    }
    assert!(e2e.status.success(), "{out}\n{err}");
    assert!(
        out.contains("OK the package installs, runs, binds, acts, stops and purges cleanly"),
        "{out}\n{err}"
    );
}
