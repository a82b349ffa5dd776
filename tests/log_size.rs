//! What the log costs: a line about one child names that child only, so
//! a binding of many children logs in proportion to them, not to their
//! square.

use nix::sys::signal::Signal;

use crate::util::{Proc, TestDaemon, TIMEOUT};

#[test]
fn a_line_about_one_child_names_no_other() {
    let mut parent = Proc::sleeper();
    let mut children: Vec<Proc> = (0..3).map(|_| Proc::sleeper()).collect();
    let pids: Vec<String> = children.iter().map(|c| c.pid().to_string()).collect();
    let daemon = TestDaemon::start(&format!(
        "[[binding]]\nparent = {}\nchildren = [{}]\n",
        parent.pid(),
        pids.join(", ")
    ));
    parent.kill9();
    for child in &mut children {
        assert_eq!(child.wait_signal(TIMEOUT), Some(Signal::SIGTERM as i32));
    }
    daemon.wait_count("sent SIGTERM to child", 3);
    daemon.wait_count("exited", 4);
    let log = daemon.log_text();
    for line in log.lines().filter(|l| l.contains(" child ")) {
        let named = pids
            .iter()
            .filter(|pid| line.contains(pid.as_str()))
            .count();
        assert_eq!(
            named, 1,
            "a line names {named} children: {line}\nlog:\n{log}"
        );
    }
}
