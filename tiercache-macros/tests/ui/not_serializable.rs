//! Rejected: an argument of the default key that is not `Serialize`; the error names the
//! argument and the three ways out.

// Warnings about the unused items of a rejected fn would only hide the error under test.
#![allow(unused)]

use tiercache::{Cache, cached};

/// Not `Serialize`, so not part of a key.
struct Filter {
    min_severity: u8,
}

#[cached(cache = cache)]
async fn findings(cache: &Cache, image: &str, filter: Filter) -> Vec<String> {
    vec![format!("{image}: {}", filter.min_severity)]
}

fn main() {}
