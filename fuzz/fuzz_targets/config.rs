//! Any text as a configuration file: parsed, or refused with errors that
//! are each one line naming the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(errors) = tether::parse_config(text, Path::new("t.toml"), &tether::BackendKind::ALL) {
        assert!(!errors.0.is_empty(), "an Err with no error");
        for err in &errors.0 {
            let line = err.to_string();
            assert!(!line.contains('\n'), "multi-line error {line:?}");
            assert!(
                line.starts_with("t.toml:"),
                "error {line:?} does not name the file"
            );
        }
    }
});
