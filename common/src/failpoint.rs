//! Crash points for fault tests. `AUTOPIPE_FAILPOINTS="NAME=N[:stop][,...]"` makes
//! the process abort (as a SIGKILL would end it: no cleanup, nothing flushed) the
//! Nth time it passes `hit(NAME)`, or with `:stop` stop there (SIGSTOP, as a frozen
//! or cut-off machine would: the test resumes it with SIGCONT), so a test can fault a
//! worker exactly inside a window that a timed kill would hit only by luck. Unset
//! (always, outside tests), `hit` only reads a flag.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The variable that arms crash points.
pub const ENV: &str = "AUTOPIPE_FAILPOINTS";

/// What an armed point does at its pass.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Abort,
    Stop,
}

/// Each armed point: the pass it acts at, what it does, and the passes so far.
type Points = HashMap<String, (u64, Action, u64)>;

fn armed() -> &'static Option<Mutex<Points>> {
    static ARMED: OnceLock<Option<Mutex<Points>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let spec = std::env::var(ENV).ok()?;
        let points = parse(&spec);
        (!points.is_empty()).then(|| Mutex::new(points))
    })
}

/// `NAME=N[:stop]` entries (N ≥ 1; a bare NAME is 1); anything else is ignored.
fn parse(spec: &str) -> Points {
    spec.split(',')
        .filter_map(|p| {
            let (name, at) = p.split_once('=').unwrap_or((p, "1"));
            let (n, action) = match at.trim().split_once(':') {
                None => (at, Action::Abort),
                Some((n, "stop")) => (n, Action::Stop),
                Some(_) => return None,
            };
            let n: u64 = n.trim().parse().ok().filter(|n| *n >= 1)?;
            Some((name.trim().to_string(), (n, action, 0)))
        })
        .filter(|(name, _)| !name.is_empty())
        .collect()
}

/// Passes crash point `name`: aborts or stops the process if this is its pass.
pub fn hit(name: &str) {
    let Some(points) = armed() else { return };
    let action = {
        let mut points = points.lock().unwrap_or_else(|e| e.into_inner());
        let Some((at, action, seen)) = points.get_mut(name) else {
            return;
        };
        *seen += 1;
        if *seen != *at {
            return;
        }
        *action
    };
    match action {
        Action::Abort => {
            eprintln!("failpoint {name}: aborting the process");
            std::process::abort();
        }
        Action::Stop => {
            eprintln!("failpoint {name}: stopping the process until SIGCONT");
            let me = std::process::id().to_string();
            if let Err(e) = std::process::Command::new("kill")
                .args(["-STOP", &me])
                .status()
            {
                eprintln!("failpoint {name}: cannot stop: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_with_their_pass() {
        let p = parse("a=3, b ,c=0,=2,d=x,e=2:stop,f=1:pause");
        assert_eq!(p.get("a"), Some(&(3, Action::Abort, 0)));
        assert_eq!(p.get("b"), Some(&(1, Action::Abort, 0)));
        assert_eq!(p.get("e"), Some(&(2, Action::Stop, 0)));
        assert_eq!(p.len(), 3, "{p:?}");
    }
}
