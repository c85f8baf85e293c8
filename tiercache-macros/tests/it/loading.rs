//! When a `#[cached]` fn's body runs: once for equal arguments, again for others; errors by
//! value and never cached; one run for concurrent calls; methods, generic fns and statics.

use std::cell::Cell;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tiercache::{Cache, Category, Mode, cached};
use tiercache_testkit::RedisServer;

use crate::helpers::{Runs, every_mode, standalone, wait_until};

/// Caches by `x` (the cache and the counter are not part of the key).
#[cached(cache = cache, skip(runs))]
async fn square(cache: &Cache, runs: &Runs, x: u64) -> u64 {
    runs.count();
    x * x
}

#[tokio::test]
async fn the_body_runs_once_per_distinct_arguments() {
    let server = RedisServer::start();
    for (mode, cache) in every_mode(&server).await {
        let runs = Runs::default();
        assert_eq!(square(&cache, &runs, 3).await, 9, "{mode}");
        assert_eq!(square(&cache, &runs, 3).await, 9, "{mode}");
        assert_eq!(
            runs.get(),
            1,
            "{mode}: the second call was served by the cache"
        );
        assert_eq!(square(&cache, &runs, 4).await, 16, "{mode}");
        assert_eq!(runs.get(), 2, "{mode}: other arguments run the body");
        assert_eq!(square(&cache, &runs, 4).await, 16, "{mode}");
        assert_eq!(square(&cache, &runs, 3).await, 9, "{mode}");
        assert_eq!(runs.get(), 2, "{mode}");
        let stats = cache.stats().await;
        assert_eq!(stats.misses, 2, "{mode}");
        assert_eq!(stats.hits, 3, "{mode}");
    }
}

/// An error type with no `Clone`, `Sync` or `Serialize`: the caller gets its own, by value.
#[derive(Debug)]
struct NotFound {
    /// Which run of the body made it.
    run: u32,
    _not_sync: Cell<()>,
}

#[cached(cache = cache, skip(runs))]
async fn find(cache: &Cache, runs: &Runs, id: u64) -> Result<String, NotFound> {
    let run = runs.count();
    if id == 0 {
        return Err(NotFound {
            run,
            _not_sync: Cell::new(()),
        });
    }
    Ok(format!("item {id}"))
}

#[tokio::test]
async fn errors_are_returned_by_value_and_never_cached() {
    let server = RedisServer::start();
    for (mode, cache) in every_mode(&server).await {
        let runs = Runs::default();
        let e = find(&cache, &runs, 0).await.unwrap_err();
        assert_eq!(e.run, 0, "{mode}");
        let e = find(&cache, &runs, 0).await.unwrap_err();
        assert_eq!(
            e.run, 1,
            "{mode}: the error was not cached, the body ran again"
        );
        assert_eq!(find(&cache, &runs, 7).await.unwrap(), "item 7", "{mode}");
        assert_eq!(find(&cache, &runs, 7).await.unwrap(), "item 7", "{mode}");
        assert_eq!(runs.get(), 3, "{mode}: Ok values are cached");
    }
}

/// Holds its load open until `callers - 1` other calls wait on it, so that every call is
/// concurrent with it whatever the scheduling.
#[cached(cache = cache, key = "{id}")]
async fn slow(cache: &Cache, runs: &Runs, callers: usize, id: u64) -> Result<u64, u32> {
    let run = runs.count();
    if run == 0 {
        let key = cache.key(&Category::from_static("slow"), [id.to_string()]);
        wait_until(
            Duration::from_secs(20),
            "the other calls to wait",
            || async { cache.loads_waiting(&key) + 1 >= callers },
        )
        .await;
    }
    if id == 0 { Err(run) } else { Ok(id) }
}

/// `callers` concurrent calls of `slow(id)`, each with its result.
async fn concurrent(
    cache: &Cache,
    runs: &Arc<Runs>,
    callers: usize,
    id: u64,
) -> Vec<Result<u64, u32>> {
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move { slow(&cache, &runs, callers, id).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_run_the_body_once() {
    let server = RedisServer::start();
    for (mode, cache) in every_mode(&server).await {
        let runs = Arc::new(Runs::default());
        let results = concurrent(&cache, &runs, 16, 5).await;
        assert!(results.iter().all(|r| *r == Ok(5)), "{mode}: {results:?}");
        assert_eq!(runs.get(), 1, "{mode}: one run for 16 concurrent calls");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_leaves_each_waiter_its_own_run() {
    let server = RedisServer::start();
    for (mode, cache) in every_mode(&server).await {
        let runs = Arc::new(Runs::default());
        let results = concurrent(&cache, &runs, 8, 0).await;
        // The leader's error is its own; each waiter ran its own body rather than share it.
        let mut errors: Vec<u32> = results.into_iter().map(Result::unwrap_err).collect();
        errors.sort_unstable();
        assert_eq!(errors, (0..8).collect::<Vec<u32>>(), "{mode}");
        assert_eq!(runs.get(), 8, "{mode}");
    }
}

struct Repo {
    cache: Cache,
    runs: Runs,
}

impl Repo {
    /// A method: `self` is not part of the key, `Self` is.
    #[cached(cache = self.cache)]
    async fn scale(&self, x: u64) -> u64 {
        self.runs.count();
        x * 2
    }
}

/// Another type with a method of the same name, in the same module and the same cache.
struct OtherRepo {
    cache: Cache,
}

impl OtherRepo {
    #[cached(cache = self.cache)]
    async fn scale(&self, x: u64) -> u64 {
        x * 3
    }
}

#[tokio::test]
async fn methods_with_self_are_cached_apart_from_same_named_ones() {
    let server = RedisServer::start();
    for (mode, cache) in every_mode(&server).await {
        let repo = Repo {
            cache: cache.clone(),
            runs: Runs::default(),
        };
        assert_eq!(repo.scale(5).await, 10, "{mode}");
        assert_eq!(repo.scale(5).await, 10, "{mode}");
        assert_eq!(repo.runs.get(), 1, "{mode}");
        let other = OtherRepo {
            cache: cache.clone(),
        };
        assert_eq!(
            other.scale(5).await,
            15,
            "{mode}: `Self` keeps the entries apart"
        );
        // Another `Repo` on the same cache shares the entries: `self` is not in the key.
        let twin = Repo {
            cache,
            runs: Runs::default(),
        };
        assert_eq!(twin.scale(5).await, 10, "{mode}");
        assert_eq!(twin.runs.get(), 0, "{mode}");
    }
}

/// A generic fn: each instance has its own entries, though `"5"` is the argument of both.
#[cached(cache = cache, skip(runs))]
async fn parse<T>(cache: &Cache, runs: &Runs, text: &str) -> Option<T>
where
    T: FromStr + Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    runs.count();
    text.parse().ok()
}

#[tokio::test]
async fn generic_fns_are_cached_per_type() {
    let cache = standalone().await;
    let runs = Runs::default();
    assert_eq!(parse::<u8>(&cache, &runs, "5").await, Some(5u8));
    assert_eq!(parse::<u8>(&cache, &runs, "5").await, Some(5u8));
    assert_eq!(
        parse::<String>(&cache, &runs, "5").await,
        Some("5".to_owned())
    );
    assert_eq!(runs.get(), 2);
    // `None` is a value like any other.
    assert_eq!(parse::<u8>(&cache, &runs, "x").await, None);
    assert_eq!(parse::<u8>(&cache, &runs, "x").await, None);
    assert_eq!(runs.get(), 3);
}

/// A cache in a static, built once (a standalone one builds without a connection).
static CACHE: LazyLock<Cache> = LazyLock::new(|| {
    std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(
                Cache::builder()
                    .namespace("static")
                    .mode(Mode::Standalone)
                    .local_capacity(1 << 20)
                    .build(),
            )
            .unwrap()
    })
    .join()
    .unwrap()
});

static STATIC_RUNS: Runs = Runs::new();

#[cached(cache = CACHE)]
async fn from_a_static(x: u32) -> u32 {
    STATIC_RUNS.count();
    x + 1
}

#[tokio::test]
async fn a_static_cache_serves_too() {
    assert_eq!(from_a_static(1).await, 2);
    assert_eq!(from_a_static(1).await, 2);
    assert_eq!(STATIC_RUNS.get(), 1);
}

#[test]
fn cached_futures_are_send() {
    fn assert_send<T: Send>(_: T) {}
    assert_send(async {
        let cache = standalone().await;
        let runs = Runs::default();
        square(&cache, &runs, 1).await;
        let repo = Repo {
            cache,
            runs: Runs::default(),
        };
        repo.scale(1).await;
        from_a_static(1).await;
    });
}

/// Application state holding the cache, as a request handler gets it.
struct AppState {
    cache: Cache,
    runs: Runs,
}

/// `state` holds the cache, not key material: skipped.
#[cached(cache = state.cache, skip(state))]
async fn through_state(state: &AppState, x: u32) -> u32 {
    state.runs.count();
    x + 1
}

#[tokio::test]
async fn the_cache_can_be_a_field_of_an_argument() {
    let state = AppState {
        cache: standalone().await,
        runs: Runs::default(),
    };
    assert_eq!(through_state(&state, 1).await, 2);
    assert_eq!(through_state(&state, 1).await, 2);
    assert_eq!(through_state(&state, 2).await, 3);
    assert_eq!(state.runs.get(), 2);
}
