//! A slow analysis cached with `#[cached]`: the first call per input takes 1.2 s, the next ones
//! come from the cache.
//!
//! Run with: `cargo run --release -p tiercache --example analysis --features macros`
//!
//! With `REDIS_URL` set (e.g. `REDIS_URL=redis://127.0.0.1:6380`) and reachable, the cache is
//! Redis with an in-process tier in front; otherwise it is standalone (in process, no Redis).
//! It prints the cold and the warm time of one input, then the hit rate of 100 calls over 5
//! inputs.

#![allow(missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tiercache::{Cache, Category, Mode, cached};

const ANALYSIS: Category = Category::from_static("analysis");

/// How many times the analysis itself ran.
static RUNS: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Analysis {
    image: String,
    critical: u32,
    risk: f64,
}

/// The expensive part of the service: 1.2 s per image. Cached for 10 minutes per image, and
/// tagged with it so that a new scan of the image (`cache.invalidate_tag(&Tag::new("image",
/// [image]))`) makes the next call analyse again.
#[cached(cache = cache, category = ANALYSIS, ttl = Duration::from_secs(600), tags = ["image:{image}"])]
async fn analyse(cache: &Cache, image: &str) -> Result<Analysis, std::io::Error> {
    RUNS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let critical = image.len() as u32 % 7;
    Ok(Analysis {
        image: image.to_owned(),
        critical,
        risk: f64::from(critical) * 1.5,
    })
}

/// Redis with an in-process tier when `REDIS_URL` is set and answers; standalone otherwise.
async fn build_cache() -> anyhow::Result<Cache> {
    let builder = || {
        Cache::builder()
            .namespace("analysis-example")
            .local_capacity(16 << 20)
    };
    if let Ok(url) = std::env::var("REDIS_URL") {
        let cache = builder()
            .url(url)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .await?;
        if cache.is_connected() {
            return Ok(cache);
        }
        println!("REDIS_URL does not answer: standalone instead");
    }
    Ok(builder().mode(Mode::Standalone).build().await?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cache = build_cache().await?;
    println!("cache mode: {}", cache.mode().as_str());
    // Start from nothing, also in a Redis that a previous run filled.
    if cache.mode() == Mode::Redis {
        cache.clear().await?;
    }

    let images = [
        "bkimminich/juice-shop:v15",
        "library/nginx:1.27",
        "library/redis:7.4",
        "library/postgres:17",
        "grafana/grafana:11.2",
    ];
    let start = Instant::now();
    let first = analyse(&cache, images[0]).await?;
    let cold = start.elapsed();
    let start = Instant::now();
    let again = analyse(&cache, images[0]).await?;
    let warm = start.elapsed();
    assert_eq!(first.critical, again.critical);
    println!("cold: {:>9.3} ms  {first:?}", ms(cold));
    println!("warm: {:>9.3} ms  (from the cache)", ms(warm));

    let before = cache.stats().await;
    let runs_before = RUNS.load(Ordering::Relaxed);
    let calls = 100;
    let start = Instant::now();
    let mut slowest_hit = Duration::ZERO;
    for i in 0..calls {
        let runs = RUNS.load(Ordering::Relaxed);
        let t = Instant::now();
        analyse(&cache, images[i % images.len()]).await?;
        if RUNS.load(Ordering::Relaxed) == runs {
            slowest_hit = slowest_hit.max(t.elapsed());
        }
    }
    let run = start.elapsed();
    let after = cache.stats().await;
    let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
    println!(
        "{calls} calls over {} inputs in {:.0} ms: {} analyses ran, {hits} hits, {misses} misses, hit rate {:.0}%, slowest hit {:.3} ms",
        images.len(),
        ms(run),
        RUNS.load(Ordering::Relaxed) - runs_before,
        100.0 * hits as f64 / (hits + misses) as f64,
        ms(slowest_hit),
    );
    if cache.mode() == Mode::Redis {
        // Leave nothing behind in a shared Redis.
        cache.clear().await?;
    }
    Ok(())
}
