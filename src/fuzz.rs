//! Property tests of everything that parses untrusted input: the
//! configuration file, control requests and the state files. Whatever the
//! input, the parser returns (no panic, no hang), and every error is one
//! line that says where. Run with `cargo test --lib fuzz`; set
//! `PROPTEST_CASES` for longer runs (the default here is 256 per property).
//!
//! Coverage-guided fuzzing of the same parsers, with cargo-fuzz and a
//! nightly toolchain, is `fuzz/run` (fuzz/fuzz_targets/). It found what
//! these properties did not: control characters a client or a file put in
//! a key came back unescaped in the one-line error, and so in the log.

use std::path::Path;

use proptest::prelude::*;

use crate::config;
use crate::daemon::StateFile;
use crate::protocol::Request;

/// Fragments that reach deep into validation: real keys with good, bad and
/// strange values, table headers, and noise.
fn config_line() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "parent",
        "child",
        "children",
        "name",
        "signal",
        "grace",
        "kill",
        "parent_start",
        "child_start",
        "parent_inode",
        "child_inode",
        "parent_pidfile",
        "child_pidfile",
        "log",
        "state",
        "socket",
        "max_bindings_per_uid",
        "backend",
        "poll_interval",
        "bogus",
    ]);
    let values = prop::sample::select(vec![
        "1",
        "0",
        "-1",
        "2",
        "4242",
        "99999999999999999999",
        "1.5",
        "true",
        "\"\"",
        "\"5s\"",
        "\"never\"",
        "\"0ms\"",
        "\"25h\"",
        "\"SIGTERM\"",
        "\"TREM\"",
        "\"64\"",
        "\"tree\"",
        "\"group\"",
        "\"/run/x.pid\"",
        "\"relative\"",
        "\"poll\"",
        "\"kqueue\"",
        "[1, 2]",
        "[]",
        "[3, 3]",
        "{ a = 1 }",
        "\"\\u0000\"",
        "\"déjà vu\"",
    ]);
    let headers = prop::sample::select(vec![
        "[daemon]",
        "[defaults]",
        "[[binding]]",
        "[[daemon]]",
        "[binding]",
        "[other]",
        "[[binding.x]]",
    ]);
    prop_oneof![
        4 => (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => headers.prop_map(str::to_owned),
        1 => "[ -~]{0,30}".prop_map(|s| s),
    ]
}

proptest! {
    #[test]
    fn fuzz_config_any_text_is_parsed_or_refused_line_by_line(text in "\\PC{0,400}") {
        check_config(&text);
    }

    #[test]
    fn fuzz_config_plausible_files_are_parsed_or_refused_line_by_line(
        lines in prop::collection::vec(config_line(), 0..40)
    ) {
        check_config(&lines.join("\n"));
    }

    #[test]
    fn fuzz_request_any_bytes_are_parsed_or_refused_in_one_line(
        bytes in prop::collection::vec(any::<u8>(), 0..300)
    ) {
        if let Err(err) = Request::parse(&bytes) {
            prop_assert!(!err.is_empty() && !err.contains('\n'), "{err:?}");
        }
    }

    #[test]
    fn fuzz_request_plausible_json_is_parsed_or_refused_in_one_line(
        op in prop::sample::select(vec!["bind", "unbind", "list", "status", "reload", "nope", ""]),
        v in prop::sample::select(vec!["1", "2", "0", "-1", "\"1\"", "null", "1e99"]),
        field in prop::sample::select(vec![
            "", ",\"id\":3", ",\"id\":-3", ",\"parent\":{\"pid\":1}", ",\"parent\":{\"pid\":4242,\"start\":7}",
            ",\"children\":[]", ",\"children\":[{\"pid\":2,\"pidfd\":9}]", ",\"signal\":\"TREM\"",
            ",\"grace\":\"5 s\"", ",\"kill\":\"tree\"", ",\"extra\":true", ",\"parent\":[]",
        ]),
    ) {
        let line = format!("{{\"v\":{v},\"op\":\"{op}\"{field}}}");
        if let Err(err) = Request::parse(line.as_bytes()) {
            prop_assert!(!err.is_empty() && !err.contains('\n'), "{line}: {err:?}");
        }
    }

    #[test]
    fn fuzz_state_files_of_any_content_load_or_are_set_aside(
        state in prop::collection::vec(any::<u8>(), 0..200),
        json in prop::sample::select(vec![
            "", "{}", "[]", "null", "{\"version\":1}", "{\"version\":2,\"bindings\":[]}",
            "{\"version\":1,\"next_id\":-1,\"bindings\":[]}",
            "{\"version\":1,\"next_id\":1,\"bindings\":[{\"id\":1}]}",
            "{\"version\":1,\"pins\":[{\"pid\":0,\"start\":1,\"boot_id\":\"x\"}]}",
            "{\"version\":1,\"pins\":[{\"pid\":-7,\"start\":-1}]}",
        ]),
        use_json in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("state.json");
        let bytes = if use_json { json.as_bytes().to_vec() } else { state };
        std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        std::fs::write(dir.path().join("state.pins.json"), &bytes)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let loaded = StateFile::new(path.clone(), "boot".into()).load();
        if let Some(warning) = &loaded.warning {
            prop_assert!(!warning.contains('\n'), "{warning:?}");
            // A file that could not be used is moved aside, never lost.
            prop_assert!(warning.contains("moved it to"), "{warning:?}");
        }
    }
}

fn check_config(text: &str) {
    if let Err(errors) = config::parse(text, Path::new("t.toml"), &crate::vocab::BackendKind::ALL) {
        assert!(!errors.0.is_empty(), "an Err with no error for {text:?}");
        for err in &errors.0 {
            let line = err.to_string();
            assert!(
                !line.contains('\n'),
                "multi-line error {line:?} for {text:?}"
            );
            assert!(
                line.starts_with("t.toml:"),
                "error {line:?} does not name the file, for {text:?}"
            );
        }
    }
}
