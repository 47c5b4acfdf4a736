//! The router's timers (`Output::Timer`) as one queue that the hub polls:
//! no task per timer, and none left running once the hub stops.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Request ids waiting for their time, earliest first.
#[derive(Default)]
pub(crate) struct Timers {
    /// (when, order of arming, request id): ties fire in arming order.
    due: BinaryHeap<Reverse<(Instant, u64, String)>>,
    armed: u64,
    /// One sleep, until the earliest deadline (reset when that changes).
    sleep: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl Timers {
    /// `req_id` times out `after` from now.
    pub fn arm(&mut self, req_id: String, after: Duration) {
        self.armed += 1;
        self.due
            .push(Reverse((Instant::now() + after, self.armed, req_id)));
    }

    /// Resolves with the request ids whose time has come (at least one);
    /// never while none is armed. Cancel-safe: nothing is taken out until
    /// it is returned.
    pub async fn expired(&mut self) -> Vec<String> {
        let Some(Reverse((first, ..))) = self.due.peek() else {
            return std::future::pending().await;
        };
        let first = *first;
        let sleep = match &mut self.sleep {
            Some((until, sleep)) => {
                if *until != first {
                    sleep.as_mut().reset(first);
                    *until = first;
                }
                sleep
            }
            None => {
                &mut self
                    .sleep
                    .insert((first, Box::pin(tokio::time::sleep_until(first))))
                    .1
            }
        };
        sleep.as_mut().await;
        let now = Instant::now();
        let mut fired = Vec::new();
        while let Some(Reverse((at, ..))) = self.due.peek()
            && *at <= now
        {
            if let Some(Reverse((_, _, req_id))) = self.due.pop() {
                fired.push(req_id);
            }
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The next batch of expired timers, within a second.
    async fn next(timers: &mut Timers) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(1), timers.expired())
            .await
            .expect("a timer should have fired")
    }

    // The clock is paused (it moves only when every task waits): on a
    // loaded machine a real clock let `late` come due beside `sooner`.
    #[tokio::test(start_paused = true)]
    async fn timers_fire_in_order_of_their_time() {
        let mut timers = Timers::default();
        let start = Instant::now();
        timers.arm("late".into(), 60 * MS);
        timers.arm("early".into(), 20 * MS);
        timers.arm("also early".into(), 20 * MS);
        assert_eq!(next(&mut timers).await, ["early", "also early"]);
        assert!(start.elapsed() >= 20 * MS);
        // One armed meanwhile, sooner than the one waiting.
        timers.arm("sooner".into(), 10 * MS);
        assert_eq!(next(&mut timers).await, ["sooner"]);
        assert_eq!(next(&mut timers).await, ["late"]);
        assert!(start.elapsed() >= 60 * MS);
        assert!(timers.due.is_empty());
    }

    #[tokio::test]
    async fn without_timers_nothing_fires() {
        let mut timers = Timers::default();
        let waited = tokio::time::timeout(50 * MS, timers.expired()).await;
        assert!(waited.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_cut_short_loses_nothing() {
        let mut timers = Timers::default();
        timers.arm("a".into(), 40 * MS);
        let cut = tokio::time::timeout(10 * MS, timers.expired()).await;
        assert!(cut.is_err());
        assert_eq!(next(&mut timers).await, ["a"]);
    }
}
