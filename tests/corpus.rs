//! The hand-made corpus of bad input in tests/corpus/ (with the broken
//! configurations in config/invalid/, checked by the unit tests): every
//! malformed request gets a one-line error and leaves the daemon serving;
//! every malformed state file is set aside or its entry dropped, with a
//! warning that names it, and the daemon starts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::util::TestDaemon;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

fn files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(CORPUS).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {dir}");
    files
}

#[test]
fn every_malformed_request_gets_a_one_line_error_and_the_daemon_serves_on() {
    let daemon = TestDaemon::start("");
    for file in files("requests") {
        let bytes = std::fs::read(&file).unwrap();
        let mut stream = UnixStream::connect(&daemon.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&bytes).unwrap();
        // A line without its newline is ended by closing our side.
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let response: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{name}: not a JSON response ({e}): {answer:?}"));
        assert_eq!(response["ok"], false, "{name}: {answer}");
        let error = response["error"].as_str().unwrap_or_default();
        assert!(
            !error.is_empty() && !error.contains('\n'),
            "{name}: {answer}"
        );
        eprintln!("{name}: {error}");
        let (code, _, err) = daemon.ctl(&["status"]);
        assert_eq!(code, 0, "{name} left the daemon unable to serve: {err}");
    }
    // Refusals are logged: no request may add a line of its own making.
    let log = daemon.log_text();
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("tetherd: "))
        .collect();
    assert!(forged.is_empty(), "log lines a request made: {forged:?}");
    // Nor break, hide or reorder text within a line.
    let hidden: Vec<&str> = log
        .lines()
        .filter(|l| l.chars().any(crate::util::hides_text))
        .collect();
    assert!(hidden.is_empty(), "hidden characters in: {hidden:?}");
}

#[test]
fn every_malformed_state_file_is_set_aside_or_its_entry_dropped_and_the_daemon_starts() {
    for file in files("state") {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut daemon = TestDaemon::start_stopped("");
        std::fs::create_dir_all(daemon.state.parent().unwrap()).unwrap();
        // `@BOOT@` stands for this boot's id, so that entries reach the
        // checks after the boot check.
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_owned())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).replace("@BOOT@", &boot);
        std::fs::write(&daemon.state, text).unwrap();
        daemon.spawn(None);
        let log = daemon.log_text();
        let (code, out, err) = daemon.ctl(&["status"]);
        assert_eq!(code, 0, "{name}: {err}\n{log}");
        assert!(out.contains("bindings:     0"), "{name}: {out}\n{log}");
        let warned = log
            .lines()
            .find(|l| l.contains("warn:") && (l.contains("state") || l.contains("restored")));
        if std::fs::metadata(&file).unwrap().len() == 0 {
            // An empty file is an empty state, not an error.
            continue;
        }
        let warned = warned.unwrap_or_else(|| panic!("{name}: no warning:\n{log}"));
        eprintln!("{name}: {warned}");
        let forged: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with("tetherd: "))
            .collect();
        assert!(
            forged.is_empty(),
            "{name}: log lines the file made: {forged:?}"
        );
    }
}
