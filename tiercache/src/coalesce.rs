//! Coalesced loading: at most one loader per key at a time in this process.
//!
//! The first caller for a key becomes the *leader*: it registers a flight and runs its loader.
//! Callers that arrive while the flight is up become *waiters*: they wait for the leader's result
//! (a value, or an error shared as `Arc<E>`) instead of running their own loader.
//!
//! # Cancellation
//! If the leader's future is dropped before it finishes (its request was cancelled, or timed
//! out), a guard removes the flight and drops its sender. Every waiter wakes up, and they race to
//! register a new flight: one becomes the new leader and runs *its own* loader, the others wait
//! for it. Nobody is stranded; the price is that the load runs again.
//!
//! Results travel type-erased (`Arc<dyn Any>`). If two callers use one key with different
//! types, the waiter cannot use the leader's result and runs its own loader.
//!
//! # Results for early callers only
//! A leader may publish a result *until* an instant ([`Publish::publish_until`]): waiters that
//! joined before it take the result; the others race to lead a new flight, as after a
//! cancellation. The cache uses it when it cannot rule out that the source changed while the
//! loader ran: a result read from the source after a caller arrived is good for that caller, but
//! not for one that arrived after a write the result may predate.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::watch;

type Shared = Arc<dyn Any + Send + Sync>;

/// A published result, and the instant from which joining waiters may not take it.
type Published = Option<(Shared, Option<Instant>)>;

struct Flight {
    id: u64,
    tx: watch::Sender<Published>,
}

/// The in-flight loads of one cache.
#[derive(Default)]
pub(crate) struct Coalescer {
    /// A std mutex, not a tokio one: it is held only to look up or change the map, never across
    /// an `.await`, so it cannot block the runtime.
    flights: Mutex<HashMap<String, Flight>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

enum Role {
    Lead(u64),
    /// With the instant the waiter joined.
    Wait(watch::Receiver<Published>, Instant),
}

/// Removes the leader's flight when dropped, whether it finished or was cancelled.
struct LeadGuard<'a> {
    coalescer: &'a Coalescer,
    key: &'a str,
    id: u64,
}

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        let mut flights = self.coalescer.lock();
        if flights.get(self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(self.key);
        }
    }
}

/// Lets a leader hand its result to the waiters before it has finished.
#[derive(Clone, Copy)]
pub(crate) struct Publish<'a> {
    /// `None` for an uncoalesced load.
    coalescer: Option<&'a Coalescer>,
    key: &'a str,
    id: u64,
}

impl Publish<'_> {
    /// For an uncoalesced load: publishing goes nowhere.
    const NOBODY: Publish<'static> = Publish {
        coalescer: None,
        key: "",
        id: u64::MAX,
    };

    /// Whether a result was published already.
    fn published(&self) -> bool {
        self.coalescer.is_some_and(|c| {
            c.lock()
                .get(self.key)
                .filter(|f| f.id == self.id)
                .is_some_and(|f| f.tx.borrow().is_some())
        })
    }

    /// Wakes the waiters with `result`. Later calls replace it for callers still to come.
    pub(crate) fn publish<R: Send + Sync + 'static>(&self, result: R) {
        let Some(coalescer) = self.coalescer else {
            return;
        };
        if let Some(flight) = coalescer.lock().get(self.key).filter(|f| f.id == self.id) {
            flight.tx.send_replace(Some((Arc::new(result), None)));
        }
    }

    /// Hands `result` to the waiters that joined before `cutoff` and ends the flight: the
    /// others, and callers from now on, race to lead a new one (see the module docs).
    pub(crate) fn publish_until<R: Send + Sync + 'static>(&self, result: R, cutoff: Instant) {
        let Some(coalescer) = self.coalescer else {
            return;
        };
        let mut flights = coalescer.lock();
        if flights.get(self.key).is_some_and(|f| f.id == self.id)
            && let Some(flight) = flights.remove(self.key)
        {
            // Waiters still read the value after the sender is gone.
            flight
                .tx
                .send_replace(Some((Arc::new(result), Some(cutoff))));
        }
    }
}

impl Coalescer {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        // The map stays consistent even if a holder panicked: every change is a single insert
        // or remove.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `lead` for `key` unless a flight for `key` is already up, in which case its result
    /// is awaited and cloned. `lead` is called at most once, and only by a leader. It may hand
    /// its result to the waiters early through [`Publish`] (before slow follow-up work such as
    /// storing it); the flight stays registered until `lead` returns, so callers arriving
    /// meanwhile get the published result instead of loading again.
    pub(crate) async fn run<'a, R, F, Fut>(&'a self, key: &'a str, lead: F) -> R
    where
        R: Clone + Send + Sync + 'static,
        F: FnOnce(Publish<'a>) -> Fut,
        Fut: Future<Output = R>,
    {
        let mut lead = Some(lead);
        loop {
            let role = {
                let mut flights = self.lock();
                match flights.get(key) {
                    Some(flight) => Role::Wait(flight.tx.subscribe(), Instant::now()),
                    None => {
                        let id = self.next_id.fetch_add(1, Relaxed);
                        let (tx, _) = watch::channel(None);
                        flights.insert(key.to_owned(), Flight { id, tx });
                        Role::Lead(id)
                    }
                }
            };
            match role {
                Role::Wait(mut rx, joined) => {
                    let published = match rx.wait_for(Option::is_some).await {
                        Ok(value) => value.clone(),
                        // The leader was dropped without a result: race to lead.
                        Err(_) => continue,
                    };
                    let Some((shared, cutoff)) = published else {
                        continue;
                    };
                    if cutoff.is_some_and(|cutoff| joined >= cutoff) {
                        // Not for us: the flight has ended; race to lead a new one.
                        continue;
                    }
                    if let Some(r) = shared.downcast_ref::<R>() {
                        return r.clone();
                    }
                    // Another type under the same key: load for ourselves, uncoalesced.
                    if let Some(f) = lead.take() {
                        return f(Publish::NOBODY).await;
                    }
                }
                Role::Lead(id) => {
                    let guard = LeadGuard {
                        coalescer: self,
                        key,
                        id,
                    };
                    let Some(f) = lead.take() else {
                        // Unreachable: `lead` is only taken right before returning.
                        continue;
                    };
                    let publish = Publish {
                        coalescer: Some(self),
                        key,
                        id,
                    };
                    let result = f(publish).await;
                    if !publish.published() {
                        publish.publish(result.clone());
                    }
                    drop(guard);
                    return result;
                }
            }
        }
    }

    /// Number of loads in flight (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Number of callers waiting on the flight for `key`.
    pub(crate) fn waiters(&self, key: &str) -> usize {
        self.lock().get(key).map_or(0, |f| f.tx.receiver_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_run() {
        let c = Arc::new(Coalescer::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (go_tx, go_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (c, runs, mut go) = (c.clone(), runs.clone(), go_rx.clone());
            tasks.push(tokio::spawn(async move {
                c.run("k", |_| async move {
                    runs.fetch_add(1, Relaxed);
                    // Hold the flight open until every caller has joined.
                    let _ = go.wait_for(|g| *g).await;
                    Ok::<u32, Arc<String>>(7)
                })
                .await
            }));
        }
        // Wait (with a deadline) until the other 99 callers wait on the one flight.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while c.waiters("k") < 99 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "callers did not join"
            );
            tokio::task::yield_now().await;
        }
        go_tx.send_replace(true);
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(runs.load(Relaxed), 1);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn errors_are_shared_as_one_arc() {
        let c = Coalescer::default();
        let r: Result<u8, Arc<String>> = c
            .run("k", |_| async { Err(Arc::new("boom".to_string())) })
            .await;
        assert_eq!(r.unwrap_err().as_str(), "boom");
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_result_until_a_cutoff_serves_only_earlier_waiters() {
        let c = Arc::new(Coalescer::default());
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (cutoff_tx, cutoff_rx) = tokio::sync::oneshot::channel::<Instant>();
        let leader = {
            let c = c.clone();
            tokio::spawn(async move {
                c.run("k", |publish| async move {
                    let cutoff = cutoff_rx.await.unwrap();
                    let _ = go_rx.await;
                    publish.publish_until(1u32, cutoff);
                    1u32
                })
                .await
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while c.in_flight() == 0 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        let join =
            |c: Arc<Coalescer>| tokio::spawn(async move { c.run("k", |_| async { 2u32 }).await });
        let early = join(c.clone());
        while c.waiters("k") < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiter did not join"
            );
            tokio::task::yield_now().await;
        }
        cutoff_tx.send(Instant::now()).unwrap();
        let late = join(c.clone());
        while c.waiters("k") < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiter did not join"
            );
            tokio::task::yield_now().await;
        }
        go_tx.send(()).unwrap();
        assert_eq!(leader.await.unwrap(), 1, "the leader keeps its own value");
        assert_eq!(
            early.await.unwrap(),
            1,
            "a waiter from before the cutoff shares it"
        );
        assert_eq!(late.await.unwrap(), 2, "a later waiter runs its own loader");
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_leader_does_not_strand_waiters() {
        let c = Arc::new(Coalescer::default());
        let leader = {
            let c = c.clone();
            tokio::spawn(async move { c.run("k", |_| std::future::pending::<u32>()).await })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while c.in_flight() == 0 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.run("k", |_| async { 42u32 }).await })
        };
        while c.waiters("k") < 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiter did not join"
            );
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "the waiter must wait for the leader");
        leader.abort();
        let v = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter stranded")
            .unwrap();
        assert_eq!(v, 42);
        assert_eq!(c.in_flight(), 0);
    }
}
