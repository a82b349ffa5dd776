//! Binding names chosen by a client cannot imitate tetherd's own words in
//! its log (issue 11, item 9), and `tetherctl exec` names a binding after
//! any program path without failing.

use crate::util::{hides_text, Proc, TestDaemon};

/// Whether `line` contains `fragment` outside an escape: a `\"` in a
/// refusal is the escaped quote, not a quote that closes the label.
fn contains_unescaped(line: &str, fragment: &str) -> bool {
    line.replace("\\\"", "").contains(fragment)
}

#[test]
fn socket_binds_with_names_that_could_forge_log_lines_are_refused() {
    let (parent, child) = (Proc::sleeper(), Proc::sleeper());
    let daemon = TestDaemon::start("");
    let (p, c) = (parent.pid().to_string(), child.pid().to_string());
    let forged = "\" #1 (uid 0): removed (parent exited)";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("x{forged}"),
            "has U+0022 at character 2, a double quote",
        ),
        (
            "a\u{2028}tetherd: info: forged".into(),
            "has U+2028 at character 2, a line or paragraph separator",
        ),
        (
            "a\u{2029}b".into(),
            "has U+2029 at character 2, a line or paragraph separator",
        ),
        (
            "evil\u{202E}txt.exe".into(),
            "has U+202E at character 5, a bidirectional control",
        ),
        (
            "\u{2066}x\u{2069}".into(),
            "has U+2066 at character 1, a bidirectional control",
        ),
        (
            "a\u{200E}b".into(),
            "has U+200E at character 2, a bidirectional control",
        ),
        (
            "zero\u{200B}width".into(),
            "has U+200B at character 5, an invisible format character",
        ),
        (
            "bom\u{FEFF}".into(),
            "has U+FEFF at character 4, an invisible format character",
        ),
        (
            "no\u{00A0}break".into(),
            "has U+00A0 at character 3, a space other than U+0020",
        ),
        (
            "tag\u{E0041}".into(),
            "has U+E0041 at character 4, a tag character",
        ),
        (
            "nel\u{0085}".into(),
            "has U+0085 at character 4, a control character",
        ),
        (
            "back\\slash".into(),
            "has U+005C at character 5, a backslash",
        ),
        (
            "back`quote".into(),
            "has U+0060 at character 5, a backquote",
        ),
        (
            "x\u{02BA}y".into(),
            "has U+02BA at character 2, a letter that looks like a double quote",
        ),
        (" lead".into(), "starts with a space at character 1"),
        ("trail ".into(), "ends with a space at character 6"),
        (
            "two  spaces".into(),
            "has two spaces in a row at character 5",
        ),
        ("x".repeat(65), "name is 65 characters long (at most 64)"),
    ];
    for (name, expected) in &cases {
        let (code, out, err) = daemon.ctl(&["bind", "--parent", &p, "--child", &c, "--name", name]);
        assert_eq!(code, 1, "{name:?} was not refused: {out}{err}");
        assert!(
            err.starts_with("tetherctl: name: ") && err.contains(expected),
            "{name:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!err.trim_end().chars().any(hides_text), "{name:?}: {err:?}");
    }
    let (_, out, _) = daemon.ctl(&["list", "--json"]);
    assert_eq!(out.trim(), "[]", "a refused name made a binding");

    // Names of any script with ASCII punctuation and single spaces are
    // fine, and the log quotes them.
    for name in ["qemu-nbd: disk 1 (sda)", "Zürich 日本 e\u{301}te\u{301}"] {
        let (code, out, err) = daemon.ctl(&["bind", "--parent", &p, "--child", &c, "--name", name]);
        assert_eq!(code, 0, "{name:?}: {out}{err}");
        let id = out.trim();
        daemon.wait_log(&format!("binding \"{name}\" #{id} (uid 0): bound by pid"));
        let (code, _, _) = daemon.ctl(&["unbind", id]);
        assert_eq!(code, 0);
    }

    // Every refusal was logged, and no line of the log carries the forged
    // fragment outside an escape, or a character that hides text.
    daemon.wait_count("refused bind from uid 0", cases.len());
    let log = daemon.log_text();
    for line in log.lines() {
        assert!(
            !contains_unescaped(line, forged),
            "forged fragment in: {line}"
        );
        assert!(
            !line.chars().any(hides_text),
            "hidden character in: {line:?}"
        );
    }
    assert!(
        log.contains("has U+202E at character 5"),
        "the refusal names the character:\n{log}"
    );
}

#[test]
fn exec_names_the_binding_after_any_program_path() {
    let daemon = TestDaemon::start("");
    let dir = tempfile::tempdir().unwrap();
    let weird = dir.path().join("we\"ird\u{202E} name  x ");
    let long = dir.path().join("a".repeat(100));
    let only_bad = dir.path().join("\"\u{200B}\u{2028}");
    for (link, shown) in [
        (&weird, Some("weird name x".to_string())),
        (&long, Some("a".repeat(64))),
        (&only_bad, None),
    ] {
        std::os::unix::fs::symlink("/bin/true", link).unwrap();
        let before = daemon.count(": bound by pid");
        let program = link.to_str().unwrap();
        let (code, out, err) = daemon.ctl(&["exec", "--", program]);
        assert_eq!(
            code,
            0,
            "exec {program:?} failed: {out}{err}\nlog:\n{}",
            daemon.log_text()
        );
        daemon.wait_count(": bound by pid", before + 1);
        let log = daemon.log_text();
        let line = log
            .lines()
            .filter(|l| l.contains(": bound by pid"))
            .nth(before)
            .unwrap();
        match shown {
            Some(name) => assert!(line.contains(&format!("binding \"{name}\" #")), "{line}"),
            // Nothing of the name is left: the binding is named by pids.
            None => assert!(line.contains("binding ") && line.contains("->"), "{line}"),
        }
    }
    // exec of an ordinary command keeps the plain program name.
    let (code, _, err) = daemon.ctl(&["exec", "--", "true"]);
    assert_eq!(code, 0, "{err}");
    daemon.wait_log("binding \"true\" #");
}
