//! Rejected: an option given twice.

// Warnings about the unused items of a rejected fn would only hide the error under test.
#![allow(unused)]

use std::time::Duration;

use tiercache::{Cache, cached};

#[cached(cache = cache, ttl = Duration::from_secs(5), ttl = Duration::from_secs(6))]
async fn load(cache: &Cache, id: u64) -> u64 {
    id
}

fn main() {}
