//! Rejected: a key template naming no argument; the error lists the arguments.

// Warnings about the unused items of a rejected fn would only hide the error under test.
#![allow(unused)]

use tiercache::{Cache, cached};

#[cached(cache = cache, key = "{image}:{tag}")]
async fn load(cache: &Cache, image: &str, version: &str) -> String {
    format!("{image}:{version}")
}

fn main() {}
