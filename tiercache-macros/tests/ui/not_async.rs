//! Rejected: #[cached] on a fn that is not async.

// Warnings about the unused items of a rejected fn would only hide the error under test.
#![allow(unused)]

use tiercache::{Cache, cached};

#[cached(cache = cache)]
fn load(cache: &Cache, id: u64) -> u64 {
    id
}

fn main() {}
