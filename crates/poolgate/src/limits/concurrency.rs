//! Concurrency limits: at most `max` requests at a time, admitted without waiting — a request
//! over the limit is refused at once (the caller answers 503 or 429 with `Retry-After`), never
//! queued. One [`ConcurrencyLimit`] is global (`proxy.max_in_flight`), one per client key
//! (`max_parallel_requests`). A [`ConcurrencyPermit`] is held until the answer's body is done.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A limit of requests in flight; `max` 0 = unlimited. The limit can change while requests hold
/// permits (a key's edited limit applies to the next request).
#[derive(Debug, Default)]
pub struct ConcurrencyLimit {
    max: AtomicU32,
    current: AtomicU32,
}

impl ConcurrencyLimit {
    pub fn new(max: u32) -> Self {
        Self {
            max: AtomicU32::new(max),
            current: AtomicU32::new(0),
        }
    }

    /// A permit if fewer than `max` are held (always, when unlimited).
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConcurrencyPermit> {
        let max = self.max.load(Ordering::Relaxed);
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (max == 0 || current < max).then_some(current + 1)
            })
            .ok()?;
        Some(ConcurrencyPermit(Arc::clone(self)))
    }

    pub fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn max(&self) -> u32 {
        self.max.load(Ordering::Relaxed)
    }

    /// Permits held now.
    pub fn in_flight(&self) -> u32 {
        self.current.load(Ordering::Acquire)
    }
}

/// One admitted request; dropping it frees the slot.
#[derive(Debug)]
pub struct ConcurrencyPermit(Arc<ConcurrencyLimit>);

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let limit = Arc::new(ConcurrencyLimit::new(2));
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        drop(a);
        let _c = limit.try_acquire().unwrap();
        assert_eq!(limit.in_flight(), 2);
        limit.set_max(0);
        let many: Vec<_> = (0..100).map(|_| limit.try_acquire().unwrap()).collect();
        assert_eq!(limit.in_flight(), 102);
        drop(many);
        assert_eq!(limit.in_flight(), 2);
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let limit = Arc::new(ConcurrencyLimit::new(8));
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limit = Arc::clone(&limit);
                let peak = Arc::clone(&peak);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(permit) = limit.try_acquire() {
                            peak.fetch_max(limit.in_flight(), Ordering::Relaxed);
                            drop(permit);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 8);
        assert_eq!(limit.in_flight(), 0);
    }
}
