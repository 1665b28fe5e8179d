//! The one retry policy: exponential backoff with full jitter
//! (`sleep = U(0, min(cap, base * 2^attempt))`, AWS architecture blog) and an attempt
//! limit. Only `Transient` errors are retried.

use crate::error::{Error, ErrorClass};
use rand::Rng;
use std::future::Future;
use std::time::Duration;

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

    /// Runs `op` until it succeeds, fails with a non-transient error, or the attempts run out.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.class() == ErrorClass::Transient && attempt + 1 < self.max_attempts => {
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
