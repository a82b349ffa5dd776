//! Any bytes as the state file, the pins file and a journal: loaded, or
//! set aside (moved, never lost) with a one-line warning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::StateFile;

fuzz_target!(|bytes: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("state.json");
    if std::fs::write(&path, bytes).is_err()
        || std::fs::write(dir.path().join("state.pins.json"), bytes).is_err()
        || std::fs::write(dir.path().join("state.journal.1"), bytes).is_err()
    {
        return;
    }
    let loaded = StateFile::new(path, "boot".into()).load();
    if let Some(warning) = &loaded.warning {
        assert!(!warning.contains('\n'), "multi-line warning {warning:?}");
        assert!(
            warning.contains("moved it to") || warning.contains("set aside"),
            "{warning:?}"
        );
    }
});
