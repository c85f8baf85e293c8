//! Load benchmark: 1,000 seeded images on PostgreSQL, 16 and 64 concurrent clients, for
//! `GET /api/scan-results?image=` and `GET /api/insights`, with the cache on and off in the
//! same run, counting database queries during each run. Prints a table; not a timed test.
//!
//! Three servers share one PostgreSQL database: cache off, Redis only, and Redis with the
//! in-process tier (the shipped configuration). The load comes from bare keep-alive HTTP/1.1
//! connections, one per client, in the same process: on a small machine the client competes
//! with the server for CPU, so it must cost as little as possible to not hide the server's
//! differences.
//!
//! Run with: `cargo bench -p scan-api --bench load`
//! (`BENCH_SECS` sets each run's length, default 3; `BENCH_IMAGES` the number of images,
//! default 1000.) It starts its own PostgreSQL cluster and redis-server through the test-kit.

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use scan_api::store::Store;
use scan_api::synth::Generator;
use scan_api::{cache_policy, ingest};
use support::{encode, serve};
use tiercache::Cache;
use tiercache_testkit::{PostgresServer, RedisServer};

struct Run {
    requests: u64,
    elapsed: Duration,
    latencies_us: Vec<f64>,
    db_queries: u64,
    errors: u64,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_by(f64::total_cmp);
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] / 1000.0
    }
}

/// `clients` concurrent loops of GET `paths[i % len]` for `secs`, each client on its own
/// keep-alive HTTP/1.1 connection (a bare hyper connection: the client should cost as little
/// CPU as possible, since it shares the machine with the server).
async fn load(
    base: &str,
    paths: Arc<Vec<String>>,
    clients: usize,
    secs: Duration,
    store: &Store,
) -> Run {
    let addr = base.trim_start_matches("http://").to_owned();
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let queries_before = store.queries();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (paths, next, errors, addr) =
                (paths.clone(), next.clone(), errors.clone(), addr.clone());
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut lat = Vec::new();
                while start.elapsed() < secs {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize % paths.len();
                    let request = hyper::Request::get(paths[i].as_str())
                        .header(hyper::header::HOST, addr.as_str())
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let t = Instant::now();
                    let ok = match sender.send_request(request).await {
                        Ok(r) if r.status().is_success() => r.into_body().collect().await.is_ok(),
                        _ => false,
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                lat
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.unwrap());
    }
    Run {
        requests: latencies_us.len() as u64,
        elapsed: start.elapsed(),
        latencies_us,
        db_queries: store.queries() - queries_before,
        errors: errors.load(Ordering::Relaxed),
    }
}

fn main() {
    let secs = Duration::from_secs_f64(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let images: u64 = std::env::var("BENCH_IMAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let pg = PostgresServer::start();
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db_url = pg.create_database();
        let seed_store = Store::connect(&db_url).await.unwrap();
        // As shipped: Redis with the in-process tier in front.
        let cache_on = cache_policy::configure(Cache::builder().url(redis.url()).namespace("bench")).build().await.unwrap();
        // Redis alone, same namespace and data, to show what each tier contributes.
        let cache_redis = cache_policy::configure(Cache::builder().url(redis.url()).namespace("bench")).local_capacity(0).build().await.unwrap();
        let cache_off = Cache::builder().enabled(false).build().await.unwrap();
        let t = Instant::now();
        ingest::seed(&seed_store, &cache_on, 7, 0, images, &|_, _| {}).await.unwrap();
        println!("seeded {images} synthetic reports (one image each) into PostgreSQL in {:.1?}", t.elapsed());

        // Separate stores so each run counts only its own queries.
        let (store_on, store_off) = (Store::connect(&db_url).await.unwrap(), Store::connect(&db_url).await.unwrap());
        let store_redis = Store::connect(&db_url).await.unwrap();
        let on = serve(store_on.clone(), cache_on.clone()).await;
        let redis_only = serve(store_redis.clone(), cache_redis).await;
        let off = serve(store_off.clone(), cache_off).await;
        let generator = Generator::new(7);
        let image_paths: Arc<Vec<String>> = Arc::new(
            (0..images)
                .map(|i| format!("/api/scan-results?image={}", encode(&generator.image_name(i))))
                .collect(),
        );
        let insight_paths = Arc::new(vec!["/api/insights".to_string()]);

        // Warm the cache once over every query (a read-only steady state is what is measured).
        for p in image_paths.iter().chain(insight_paths.iter()) {
            reqwest::get(format!("{on}{p}")).await.unwrap().bytes().await.unwrap();
        }

        println!("each run {secs:?}; latencies in ms; db queries counted by the store during the run");
        println!("cache: off = every read from PostgreSQL; redis = Redis only; on = in-process tier + Redis (as shipped); speed-up against off");
        println!("| endpoint | clients | cache | req/s | p50 | p99 | db queries | errors | speed-up | queries saved |");
        println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for (name, paths) in [("GET /api/scan-results?image=", image_paths.clone()), ("GET /api/insights", insight_paths.clone())] {
            for clients in [16usize, 64] {
                let mut off_run = load(&off, paths.clone(), clients, secs, &store_off).await;
                let mut redis_run = load(&redis_only, paths.clone(), clients, secs, &store_redis).await;
                let mut on_run = load(&on, paths.clone(), clients, secs, &store_on).await;
                let off_per_request = off_run.db_queries as f64 / off_run.requests as f64;
                let off_rps = off_run.rps();
                for (label, run) in [("off", &mut off_run), ("redis", &mut redis_run), ("on", &mut on_run)] {
                    let (p50, p99) = (run.pct(0.5), run.pct(0.99));
                    let tail = if label == "off" {
                        "| ".to_owned()
                    } else {
                        let saved = 1.0 - (run.db_queries as f64 / run.requests as f64) / off_per_request;
                        format!("{:.1}× | {:.1}%", run.rps() / off_rps, saved * 100.0)
                    };
                    println!(
                        "| {name} | {clients} | {label} | {:.0} | {p50:.2} | {p99:.2} | {} | {} | {tail} |",
                        run.rps(),
                        run.db_queries,
                        run.errors,
                    );
                }
            }
        }
        let s = cache_on.stats().await;
        println!("cache: {} hits, {} misses, hit rate {:.4}, {} keys", s.hits, s.misses, s.hit_rate, s.keys.unwrap_or(0));
    });
}
