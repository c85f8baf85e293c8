//! Cache-aside in front of a slow "database", with Redis if it is reachable.
//!
//! Run with: `cargo run --release -p tiercache --example quickstart`
//!
//! Reads `REDIS_URL` (default `redis://127.0.0.1:6379`), `REDIS_USERNAME`, `REDIS_PASSWORD`,
//! `REDIS_DB`, `CACHE_NAMESPACE` and `APP_ENV`. Without Redis it still runs: every read goes to
//! the database and the log says so.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tiercache::{Cache, CacheBuilder, Category, Tag};

/// The application's own category, with its own TTL below.
const IMAGES: Category = Category::from_static("images");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageSummary {
    name: String,
    critical: u32,
    high: u32,
}

/// Stands in for a database query that takes 100 ms.
async fn load_from_database(name: &str) -> ImageSummary {
    tokio::time::sleep(Duration::from_millis(100)).await;
    ImageSummary {
        name: name.to_owned(),
        critical: 3,
        high: 12,
    }
}

async fn timed_read(cache: &Cache, name: &str) -> anyhow::Result<()> {
    // Tagged with the image, so that one `invalidate_tag` reaches every entry about it.
    let key = cache
        .key(&IMAGES, [name])
        .with_tags([Tag::new("image", [name])]);
    let start = Instant::now();
    let summary = cache.get_with(&key, load_from_database(name)).await;
    println!(
        "{:>8.2} ms  {summary:?}",
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cache = CacheBuilder::from_env()
        .namespace(std::env::var("CACHE_NAMESPACE").unwrap_or_else(|_| "quickstart".into()))
        .ttl(IMAGES, Duration::from_secs(900))
        .local_capacity(16 << 20)
        .build()
        .await?;
    println!("redis connected: {}", cache.is_connected());

    let name = "bkimminich/juice-shop";
    println!("first read (miss, loads from the database):");
    timed_read(&cache, name).await?;
    println!("second read (hit when Redis is there):");
    timed_read(&cache, name).await?;

    println!("a write invalidates the image's tag; the next read loads again:");
    cache.invalidate_tag(&Tag::new("image", [name])).await;
    timed_read(&cache, name).await?;

    println!(
        "stats: {}",
        serde_json::to_string_pretty(&cache.stats().await)?
    );
    // Leave nothing behind in a shared Redis.
    let _ = cache.clear().await;
    Ok(())
}
