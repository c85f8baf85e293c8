//! `ResponseCacheLayer` hits over real HTTP against the floor they are built on: three routes
//! of one server, loaded side by side in one run.
//!
//! | route | what answers |
//! |---|---|
//! | `cached` | a handler that builds a ~2 KB scan summary and serializes it to JSON, behind `ResponseCacheLayer` (in-process tier + Redis); after warm-up every request is a hit |
//! | `uncached` | the same handler, no layer: what the cache saves |
//! | `constant` | a handler returning the same JSON as a constant `Bytes`: the floor (axum, hyper, the client) that a hit cannot go under |
//!
//! The ratio to read is `cached / constant` (target: at least 0.7× the constant handler's
//! throughput, and p99 under 1 ms at 64 connections). In the first table each client sends its
//! next request when the last answer is in, so a route's mean latency is connections /
//! throughput (a saturated server's queue): a p99 under 1 ms at 64 connections there would need
//! well over 64,000 req/s, which on a 2-core machine not even the constant route reaches. The
//! paced table below it is where p99 is read. The load
//! comes from bare keep-alive
//! HTTP/1.1 connections (hyper's client connection, one per simulated client) in the same
//! process, opened before each round starts; on a 2-core machine the client shares the CPU
//! with the server, which is why it is as bare as it can be. Rounds alternate between the
//! routes, so drift of the machine (other load, frequency) spreads over all three alike. Every
//! request's latency is recorded (send to last body byte).
//!
//! Two more tables load the routes at 64 connections again, paced at a half and at a quarter of
//! the constant route's throughput (each client sends at an even rate, staggered), so that
//! latency is what a request costs on a server with room to spare: this is where the p99 target
//! is read.
//!
//! A third table calls the same router directly (`oneshot`, no network, one call at a time):
//! the layer's own cost on a hit, without the HTTP stack and the client around it.
//!
//! Checked, not timed: every request answered 200 with the full body; every request to the
//! cached route said `X-Cache: HIT` and its handler never ran while measured. The in-process
//! tier's share of those hits is printed (a tier that lapses under CPU starvation sends its
//! hits to Redis, which shows in the numbers).
//!
//! Run with: `cargo bench -p tiercache-axum --bench layer`
//! (`BENCH_SECS=2` sets the length of each round; default 1.) It starts its own redis-server
//! through the test-kit.

#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::serve::{Listener, ListenerExt};
use axum::{Json, Router};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tiercache::{Cache, Category};
use tiercache_axum::response_cache::{CachePolicy, ResponseCacheLayer};
use tiercache_testkit::RedisServer;
use tower::ServiceExt;

const CONNECTIONS: [usize; 2] = [16, 64];
const ROUNDS: usize = 3;

#[derive(Debug, Clone, Serialize)]
struct Finding {
    id: String,
    package: String,
    installed: String,
    fixed: Option<String>,
    severity: String,
}

/// The scan summary `scan-api` serves, as `tiercache`'s benches build it.
#[derive(Debug, Clone, Serialize)]
struct ScanSummary {
    id: u64,
    artifact_name: String,
    created_at: String,
    counts: Vec<(String, u32)>,
    findings: Vec<Finding>,
}

/// About 2 KB as JSON.
fn summary() -> ScanSummary {
    let severities = ["CRITICAL", "HIGH", "MEDIUM", "LOW"];
    ScanSummary {
        id: 123_456,
        artifact_name: "bkimminich/juice-shop:v12.10.2".into(),
        created_at: "2026-11-21T12:00:00Z".into(),
        counts: severities.iter().map(|s| ((*s).to_owned(), 7)).collect(),
        findings: (0..19)
            .map(|i| Finding {
                id: format!("CVE-2021-{:05}", 3000 + i),
                package: format!("package-{i}"),
                installed: format!("1.{i}.0"),
                fixed: (i % 3 != 0).then(|| format!("1.{i}.5")),
                severity: severities[i % 4].to_owned(),
            })
            .collect(),
    }
}

/// Builds the summary and serializes it, each request.
async fn build_summary(State(runs): State<Arc<AtomicUsize>>) -> Json<ScanSummary> {
    runs.fetch_add(1, Ordering::Relaxed);
    Json(summary())
}

/// The same JSON, built once.
async fn constant(
    State(body): State<Bytes>,
) -> ([(axum::http::HeaderName, &'static str); 1], Bytes) {
    ([(CONTENT_TYPE, "application/json")], body)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Constant,
    Cached,
    Uncached,
}

impl Route {
    const ALL: [Route; 3] = [Route::Constant, Route::Cached, Route::Uncached];

    fn path(self) -> &'static str {
        match self {
            Route::Constant => "/constant",
            Route::Cached => "/cached",
            Route::Uncached => "/uncached",
        }
    }
}

#[derive(Default)]
struct Tally {
    requests: u64,
    /// Not a 200 with the whole body, or a transport error.
    errors: u64,
    /// Answers without `X-Cache: HIT`.
    not_hits: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
}

impl Tally {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p` quantile, in milliseconds.
    fn percentile_ms(&mut self, p: f64) -> f64 {
        self.latencies_ns.sort_unstable();
        let i = ((self.latencies_ns.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_ns[i] as f64 / 1e6
    }
}

/// One bare keep-alive HTTP/1.1 connection to `addr`.
async fn connect(addr: &str) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// `connections` clients, each on its own connection, sending `GET route` for `secs`; added to
/// `tally`. Without `pace`, each client sends its next request when the last answer is in (a
/// closed loop); with `pace`, the clients together send that many requests per second at an
/// even rate (each every `connections / pace` seconds, staggered). Latency is from each
/// request's send to its last body byte.
async fn round(
    addr: &Arc<str>,
    route: Route,
    connections: usize,
    pace: Option<f64>,
    body_len: usize,
    secs: Duration,
    tally: &mut Tally,
) {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await);
    }
    let every = pace.map(|rate| Duration::from_secs_f64(connections as f64 / rate));
    let start = tokio::time::Instant::now();
    let clients: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(c, mut sender)| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let (mut errors, mut not_hits) = (0u64, 0u64);
                let mut latencies = Vec::with_capacity(1 << 14);
                let mut next = every.map(|e| start + e.mul_f64(c as f64 / connections as f64));
                while next.unwrap_or_else(tokio::time::Instant::now) - start < secs {
                    if let (Some(at), Some(e)) = (next.as_mut(), every) {
                        tokio::time::sleep_until(*at).await;
                        *at += e;
                    }
                    let request = hyper::Request::get(route.path())
                        .header(hyper::header::HOST, &*addr)
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let t = Instant::now();
                    // The connection is ready again once the last answer's end was processed.
                    let sent = match sender.ready().await {
                        Ok(()) => sender.send_request(request).await,
                        Err(e) => Err(e),
                    };
                    let ok = match sent {
                        Ok(r) => {
                            let ok = r.status() == hyper::StatusCode::OK;
                            let hit = r.headers().get("x-cache").is_some_and(|v| v == "HIT");
                            let body = r.into_body().collect().await;
                            not_hits += u64::from(!hit);
                            ok && body.is_ok_and(|b| b.to_bytes().len() == body_len)
                        }
                        Err(_) => false,
                    };
                    latencies.push(t.elapsed().as_nanos() as u64);
                    errors += u64::from(!ok);
                }
                (errors, not_hits, latencies)
            })
        })
        .collect();
    for client in clients {
        let (errors, not_hits, mut latencies) = client.await.unwrap();
        tally.requests += latencies.len() as u64;
        tally.errors += errors;
        tally.not_hits += not_hits;
        tally.latencies_ns.append(&mut latencies);
    }
    tally.elapsed += start.elapsed();
}

/// Calls of `GET route` straight into `app`, one after the other, for `secs`; added to `tally`.
async fn direct(app: &Router, route: Route, body_len: usize, secs: Duration, tally: &mut Tally) {
    let start = Instant::now();
    while start.elapsed() < secs {
        let request = axum::http::Request::get(route.path())
            .body(axum::body::Body::empty())
            .unwrap();
        let t = Instant::now();
        let response = app.clone().oneshot(request).await.unwrap();
        let ok = response.status() == axum::http::StatusCode::OK;
        let hit = response
            .headers()
            .get("x-cache")
            .is_some_and(|v| v == "HIT");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        tally.latencies_ns.push(t.elapsed().as_nanos() as u64);
        tally.requests += 1;
        tally.errors += u64::from(!ok || body.len() != body_len);
        tally.not_hits += u64::from(!hit);
    }
    tally.elapsed += start.elapsed();
}

fn main() {
    let secs = Duration::from_secs_f64(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0),
    );
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&redis, secs));
}

async fn run(redis: &RedisServer, secs: Duration) {
    let cache = Cache::builder()
        .url(redis.url())
        .namespace("layer-bench")
        .local_capacity(16 << 20)
        .build()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cache.stats().await.local.is_some_and(|l| l.live) {
        assert!(
            Instant::now() < deadline,
            "the in-process tier did not go live"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let json = Bytes::from(serde_json::to_vec(&summary()).unwrap());
    let (cached_runs, uncached_runs) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let policy = CachePolicy::new(Category::from_static("scans")).ttl(Duration::from_secs(3600));
    let app = Router::new()
        .route(
            Route::Cached.path(),
            get(build_summary)
                .layer(ResponseCacheLayer::new(cache.clone(), policy))
                .with_state(cached_runs.clone()),
        )
        .route(
            Route::Uncached.path(),
            get(build_summary).with_state(uncached_runs.clone()),
        )
        .route(
            Route::Constant.path(),
            get(constant).with_state(json.clone()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    let addr: Arc<str> = listener.local_addr().unwrap().to_string().into();
    let served = app.clone();
    tokio::spawn(async move { axum::serve(listener, served).await.unwrap() });

    // Warm-up: the entry is stored, and every route answers the same bytes.
    let mut warm = connect(&addr).await;
    for (route, x_cache) in [
        (Route::Cached, Some("MISS")),
        (Route::Cached, Some("HIT")),
        (Route::Uncached, None),
        (Route::Constant, None),
    ] {
        let request = hyper::Request::get(route.path())
            .header(hyper::header::HOST, &*addr)
            .body(Empty::<Bytes>::new())
            .unwrap();
        warm.ready().await.unwrap();
        let r = warm.send_request(request).await.unwrap();
        assert_eq!(r.status(), hyper::StatusCode::OK);
        assert_eq!(
            r.headers().get("x-cache").map(|v| v.to_str().unwrap()),
            x_cache,
            "{route:?}"
        );
        assert_eq!(
            r.into_body().collect().await.unwrap().to_bytes(),
            json,
            "{route:?}"
        );
    }
    drop(warm);
    assert_eq!(cached_runs.load(Ordering::Relaxed), 1);

    let stats_before = cache.stats().await;
    println!(
        "body {} bytes of JSON; {ROUNDS} alternating rounds of {secs:?} per route; latency from send to last body byte, in ms",
        json.len()
    );
    println!("| connections | route | req/s | p50 ms | p99 ms | ratio to constant |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut cached_requests = 0;
    let mut constant_capacity = 0.0;
    for connections in CONNECTIONS {
        let mut tallies: Vec<Tally> = Route::ALL.iter().map(|_| Tally::default()).collect();
        for r in 0..ROUNDS {
            // Each round starts with another route, so none is always first after a pause.
            for k in 0..Route::ALL.len() {
                let i = (r + k) % Route::ALL.len();
                round(
                    &addr,
                    Route::ALL[i],
                    connections,
                    None,
                    json.len(),
                    secs,
                    &mut tallies[i],
                )
                .await;
            }
        }
        let floor = tallies[0].throughput();
        constant_capacity = floor;
        for (route, tally) in Route::ALL.iter().zip(tallies.iter_mut()) {
            assert_eq!(
                tally.errors, 0,
                "{route:?}: every request answered 200 with the whole body"
            );
            println!(
                "| {connections} | {} | {:.0} | {:.3} | {:.3} | {:.2} |",
                &route.path()[1..],
                tally.throughput(),
                tally.percentile_ms(0.5),
                tally.percentile_ms(0.99),
                tally.throughput() / floor,
            );
        }
        let cached = &tallies[1];
        assert_eq!(
            cached.not_hits, 0,
            "every request to the cached route was a hit"
        );
        cached_requests += cached.requests;
    }
    // 64 connections again, paced at a half and at a quarter of the constant route's
    // closed-loop throughput: the latency of a request on a server with room to spare.
    let connections = CONNECTIONS[CONNECTIONS.len() - 1];
    for share in [0.5, 0.25] {
        let rate = (constant_capacity * share).round();
        println!();
        println!(
            "{connections} connections paced at {rate:.0} req/s in all ({share}× the constant route's throughput above); latency from send to last body byte, in ms"
        );
        println!("| connections | route | req/s | p50 ms | p99 ms | p99.9 ms |");
        println!("|---:|---|---:|---:|---:|---:|");
        let mut tallies: Vec<Tally> = Route::ALL.iter().map(|_| Tally::default()).collect();
        for r in 0..ROUNDS {
            for k in 0..Route::ALL.len() {
                let i = (r + k) % Route::ALL.len();
                round(
                    &addr,
                    Route::ALL[i],
                    connections,
                    Some(rate),
                    json.len(),
                    secs,
                    &mut tallies[i],
                )
                .await;
            }
        }
        for (route, tally) in Route::ALL.iter().zip(tallies.iter_mut()) {
            assert_eq!(
                tally.errors, 0,
                "{route:?}: every request answered 200 with the whole body"
            );
            println!(
                "| {connections} | {} | {:.0} | {:.3} | {:.3} | {:.3} |",
                &route.path()[1..],
                tally.throughput(),
                tally.percentile_ms(0.5),
                tally.percentile_ms(0.99),
                tally.percentile_ms(0.999),
            );
        }
        assert_eq!(
            tallies[1].not_hits, 0,
            "every paced request to the cached route was a hit"
        );
        cached_requests += tallies[1].requests;
    }

    // The same routes called straight into the router, one call at a time: what the layer
    // costs on a hit without the HTTP stack and the client around it.
    println!();
    println!("the router alone (`oneshot`, no network, one task); time per call in µs");
    println!("| route | calls/s | p50 µs | p99 µs | ratio to constant |");
    println!("|---|---:|---:|---:|---:|");
    let mut tallies: Vec<Tally> = Route::ALL.iter().map(|_| Tally::default()).collect();
    for r in 0..ROUNDS {
        for k in 0..Route::ALL.len() {
            let i = (r + k) % Route::ALL.len();
            direct(&app, Route::ALL[i], json.len(), secs, &mut tallies[i]).await;
        }
    }
    let floor = tallies[0].throughput();
    for (route, tally) in Route::ALL.iter().zip(tallies.iter_mut()) {
        assert_eq!(
            tally.errors, 0,
            "{route:?}: every call answered 200 with the whole body"
        );
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.2} |",
            &route.path()[1..],
            tally.throughput(),
            tally.percentile_ms(0.5) * 1e3,
            tally.percentile_ms(0.99) * 1e3,
            tally.throughput() / floor,
        );
    }
    assert_eq!(
        tallies[1].not_hits, 0,
        "every call of the cached route was a hit"
    );
    cached_requests += tallies[1].requests;

    let stats_after = cache.stats().await;
    let local = stats_after.local.unwrap();
    println!(
        "cached route: {cached_requests} requests measured, handler runs during them {}; cache hits +{} (in-process tier +{}), misses +{}; Redis call errors {} (timeouts {}); tier lapses {}, channel losses {}",
        cached_runs.load(Ordering::Relaxed) - 1,
        stats_after.hits - stats_before.hits,
        stats_after.local_hits - stats_before.local_hits,
        stats_after.misses - stats_before.misses,
        stats_after.errors,
        stats_after.timeouts,
        local.lapses,
        local.channel_losses,
    );
    assert_eq!(
        cached_runs.load(Ordering::Relaxed),
        1,
        "the cached route's handler never ran while measured"
    );
    assert_eq!(
        stats_after.hits - stats_before.hits,
        cached_requests,
        "every measured request to the cached route was a cache hit"
    );
}
