//! Many bindings in one daemon, all honoured.

use crate::util::{binding, Proc, TestDaemon, TIMEOUT};

#[test]
fn a_thousand_bindings_are_all_honoured() {
    const N: usize = 1000;
    let mut pairs: Vec<(Proc, Proc)> = (0..N).map(|_| (Proc::sleeper(), Proc::sleeper())).collect();
    let mut config = String::new();
    for (p, c) in &pairs {
        config.push_str(&binding(p.pid(), c.pid(), ""));
    }
    let daemon = TestDaemon::start(&config);
    for (parent, _) in &mut pairs {
        parent.kill9();
    }
    let mut n_terminated = 0;
    for (_, child) in &mut pairs {
        if child.wait_signal(TIMEOUT) == Some(libc::SIGTERM) {
            n_terminated += 1;
        }
    }
    assert_eq!(n_terminated, N, "log:\n{}", daemon.log_text());
}
