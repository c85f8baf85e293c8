//! Rejected: no `cache = <expr>`; the error shows the forms it takes.

// Warnings about the unused items of a rejected fn would only hide the error under test.
#![allow(unused)]

use tiercache::{Cache, cached};

#[cached(key = "{id}")]
async fn load(cache: &Cache, id: u64) -> u64 {
    let _ = cache;
    id
}

fn main() {}
