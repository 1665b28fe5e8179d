//! Crash points for fault tests. `AUTOPIPE_FAILPOINTS="NAME=N[,NAME=N...]"` makes
//! the process abort (as a SIGKILL would end it: no cleanup, nothing flushed) the
//! Nth time it passes `hit(NAME)`, so a test can crash a worker exactly inside a
//! window that a timed kill would hit only by luck. Unset (always, outside tests),
//! `hit` only reads a flag.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The variable that arms crash points.
pub const ENV: &str = "AUTOPIPE_FAILPOINTS";

/// Each armed point: the pass to abort at, and the passes so far.
type Points = HashMap<String, (u64, u64)>;

fn armed() -> &'static Option<Mutex<Points>> {
    static ARMED: OnceLock<Option<Mutex<Points>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let spec = std::env::var(ENV).ok()?;
        let points = parse(&spec);
        (!points.is_empty()).then(|| Mutex::new(points))
    })
}

/// `NAME=N` pairs (N ≥ 1; a bare NAME is 1); anything else is ignored.
fn parse(spec: &str) -> Points {
    spec.split(',')
        .filter_map(|p| {
            let (name, n) = p.split_once('=').unwrap_or((p, "1"));
            let n: u64 = n.trim().parse().ok().filter(|n| *n >= 1)?;
            Some((name.trim().to_string(), (n, 0)))
        })
        .filter(|(name, _)| !name.is_empty())
        .collect()
}

/// Passes crash point `name`: aborts the process if this is its armed pass.
pub fn hit(name: &str) {
    let Some(points) = armed() else { return };
    let mut points = points.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, seen)) = points.get_mut(name) {
        *seen += 1;
        if *seen == *at {
            eprintln!("failpoint {name}: aborting the process at pass {at}");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_with_their_pass() {
        let p = parse("a=3, b ,c=0,=2,d=x");
        assert_eq!(p.get("a"), Some(&(3, 0)));
        assert_eq!(p.get("b"), Some(&(1, 0)));
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
