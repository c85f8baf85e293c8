//! Rejected: a return type the cache cannot store; the error, at the return type, says what
//! a cached value must be.

// Warnings about the unused items of a rejected fn would only hide the error under test.
#![allow(unused)]

use tiercache::{Cache, cached};

/// Not `Serialize` nor `Deserialize`: the cache could not store it.
#[derive(Clone)]
struct Report {
    critical: u32,
}

#[cached(cache = cache)]
async fn load(cache: &Cache, id: u64) -> Report {
    Report {
        critical: id as u32,
    }
}

fn main() {}
