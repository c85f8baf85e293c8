//! Rejected: the `result` flag on a fn that does not return a `Result`.

// Warnings about the unused items of a rejected fn would only hide the error under test.
#![allow(unused)]

use tiercache::{Cache, cached};

#[cached(cache = cache, result)]
async fn load(cache: &Cache, id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
