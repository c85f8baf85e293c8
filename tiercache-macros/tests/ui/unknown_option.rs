//! Rejected: an option #[cached] does not know (`time` for `ttl`); the error lists the options.

// Warnings about the unused items of a rejected fn would only hide the error under test.
#![allow(unused)]

use tiercache::{Cache, cached};

#[cached(cache = cache, time = 60)]
async fn load(cache: &Cache, id: u64) -> u64 {
    id
}

fn main() {}
