//! Following the coordinator group's leader. Workers and the CLI know a list of
//! coordinator addresses; a follower refuses writes with `UNAVAILABLE` and the leader's
//! address in the `autopipe-leader` metadata key. `Coordinators` goes to the hinted
//! leader next, and otherwise on to the next address of the list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// gRPC metadata key carrying the leader's address on a follower's refusal.
pub const LEADER_KEY: &str = "autopipe-leader";

/// The leader address a refusal names, if any.
pub fn leader_hint(s: &tonic::Status) -> Option<String> {
    s.metadata()
        .get(LEADER_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
}

/// Coordinator addresses and the one to call next.
#[derive(Debug)]
pub struct Coordinators {
    addrs: Vec<String>,
    leader: Mutex<Option<String>>,
    next: AtomicUsize,
}

impl Coordinators {
    /// From addresses (`host:port` or URLs); a comma-separated entry is split.
    pub fn new<S: AsRef<str>>(addrs: &[S]) -> Self {
        let addrs = addrs
            .iter()
            .flat_map(|a| a.as_ref().split(','))
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        Self {
            addrs,
            leader: Mutex::new(None),
            next: AtomicUsize::new(0),
        }
    }

    /// All configured addresses.
    pub fn all(&self) -> &[String] {
        &self.addrs
    }

    /// The address to call: the leader last heard of, else the current one of the list.
    pub fn current(&self) -> String {
        if let Some(l) = self.leader.lock().expect("leader lock poisoned").clone() {
            return l;
        }
        if self.addrs.is_empty() {
            return String::new();
        }
        self.addrs[self.next.load(Ordering::Relaxed) % self.addrs.len()].clone()
    }

    /// After a failed call to `addr`: follow the refusal's leader hint (true: call
    /// again at once), or move on to the next address of the list (false: back off).
    pub fn failed(&self, addr: &str, status: Option<&tonic::Status>) -> bool {
        let mut leader = self.leader.lock().expect("leader lock poisoned");
        match status.and_then(leader_hint) {
            Some(hint) if hint != addr => {
                *leader = Some(hint);
                true
            }
            _ => {
                *leader = None;
                self.next.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_with_a_hint_is_followed_and_silence_rotates() {
        let c = Coordinators::new(&["a:1,b:2", "c:3"]);
        assert_eq!(c.all(), ["a:1", "b:2", "c:3"]);
        assert_eq!(c.current(), "a:1");
        let mut st = tonic::Status::unavailable("not the leader");
        st.metadata_mut().insert(LEADER_KEY, "c:3".parse().unwrap());
        assert!(c.failed("a:1", Some(&st)));
        assert_eq!(c.current(), "c:3");
        // the hinted leader is gone too: back to the list, one further on
        assert!(!c.failed("c:3", None));
        assert_eq!(c.current(), "b:2");
        assert!(!c.failed("b:2", Some(&tonic::Status::unavailable("down"))));
        assert_eq!(c.current(), "c:3");
    }
}
