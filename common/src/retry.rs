//! The one retry policy: exponential backoff with full jitter
//! (`sleep = U(0, min(cap, base * 2^attempt))`, AWS architecture blog) and an attempt
//! limit. Only `Transient` errors are retried, and only while the process's retry
//! budget allows: tower's `TpsBudget` (Finagle's retry budget) lets retries add at most
//! a percentage to the calls of the last seconds, plus a small floor, so a sick
//! cluster is not flooded with retries. An exhausted budget is counted
//! (`autopipe_retry_budget_exhausted_total`) and alerted on by the coordinator.

use crate::error::{Error, ErrorClass};
use rand::Rng;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tower::retry::budget::{Budget, TpsBudget};

/// A retry budget: every first call deposits, every retry withdraws.
#[derive(Debug)]
pub struct RetryBudget {
    budget: TpsBudget,
    exhausted: AtomicU64,
}

/// Default budget window.
pub const BUDGET_TTL: Duration = Duration::from_secs(10);
/// Default retries per second allowed regardless of traffic.
pub const BUDGET_MIN_PER_SEC: u32 = 10;
/// Default share of retries over calls.
pub const BUDGET_RETRY_PERCENT: f32 = 0.2;

impl RetryBudget {
    /// Retries may add `retry_percent` (0 to 1000) to the calls of the last `ttl`
    /// (1 to 60 s), plus `min_per_sec` per second.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        Self {
            budget: TpsBudget::new(
                ttl.clamp(Duration::from_secs(1), Duration::from_secs(60)),
                min_per_sec,
                retry_percent.clamp(0.0, 1000.0),
            ),
            exhausted: AtomicU64::new(0),
        }
    }
    /// Records a first call.
    pub fn deposit(&self) {
        self.budget.deposit();
    }
    /// Asks for one retry; false (and counted) when the budget is exhausted.
    pub fn withdraw(&self) -> bool {
        let ok = self.budget.withdraw();
        if !ok {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
    /// Retries refused so far.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }
}

static BUDGET: OnceLock<RetryBudget> = OnceLock::new();

/// Sets the process's retry budget; only before first use (false otherwise).
pub fn init_budget(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> bool {
    BUDGET
        .set(RetryBudget::new(ttl, min_per_sec, retry_percent))
        .is_ok()
}

/// The process's retry budget (every RPC retry and task retry draws on it).
pub fn budget() -> &'static RetryBudget {
    BUDGET.get_or_init(|| RetryBudget::new(BUDGET_TTL, BUDGET_MIN_PER_SEC, BUDGET_RETRY_PERCENT))
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// first backoff ceiling
    pub base: Duration,
    /// largest backoff ceiling
    pub cap: Duration,
    /// total attempts, including the first (Spark's `spark.task.maxFailures` default is 4)
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(5),
            max_attempts: 4,
        }
    }
}

impl RetryPolicy {
    /// Ceiling of the sleep before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(20));
        exp.min(self.cap)
    }

    /// A full-jitter sleep before retry number `attempt`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceil = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ceil))
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or the attempts
    /// (or the process's retry budget) run out.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.run_with(budget(), op).await
    }

    /// `run` drawing on `budget`.
    pub async fn run_with<T, F, Fut>(&self, budget: &RetryBudget, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        budget.deposit();
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.class() == ErrorClass::Transient && attempt + 1 < self.max_attempts => {
                    if !budget.withdraw() {
                        return Err(Error::Transient(format!(
                            "{e} (not retried: the retry budget is exhausted)"
                        )));
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_ceiling_doubles_until_the_cap() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: 4,
        };
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(400));
        assert_eq!(p.ceiling(9), Duration::from_secs(1));
        for a in 0..10 {
            assert!(p.backoff(a) <= p.ceiling(a));
        }
    }

    #[tokio::test]
    async fn an_exhausted_budget_stops_retries_and_is_counted() {
        let p = RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            max_attempts: 10,
        };
        // no floor, 50%: one retry per two first calls
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.5);
        let calls = AtomicU32::new(0);
        let flaky = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::Transient("flaky".into()))
        };
        let e = p.run_with(&b, flaky).await.unwrap_err();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one deposit buys no retry yet"
        );
        assert!(e.to_string().contains("retry budget is exhausted"), "{e}");
        assert_eq!(e.class(), ErrorClass::Transient);
        calls.store(0, Ordering::SeqCst);
        p.run_with(&b, flaky).await.unwrap_err();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "two deposits buy one retry"
        );
        assert_eq!(b.exhausted(), 2);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_and_permanent_ones_are_not() {
        let p = RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            max_attempts: 4,
        };
        let calls = AtomicU32::new(0);
        let r: Result<(), Error> = p
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Transient("flaky".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        calls.store(0, Ordering::SeqCst);
        let r: Result<(), Error> = p
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Permanent("bad".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
