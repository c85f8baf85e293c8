//! Codec comparison for the value envelope: encode and decode time and size of the same ~2 KB
//! value with postcard, MessagePack and JSON, with and without LZ4. Prints a table; the
//! README's codec figures come from here.
//!
//! Run with: `cargo bench -p tiercache --bench codec`

#![allow(missing_docs, clippy::unwrap_used)]

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use support::{ScanSummary, value};

const ITERS: u32 = 100_000;

fn time(mut f: impl FnMut()) -> Duration {
    for _ in 0..ITERS / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..ITERS {
        f();
    }
    start.elapsed() / ITERS
}

fn row(
    name: &str,
    encode: impl Fn(&ScanSummary) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> ScanSummary,
) {
    let v = value();
    let bytes = encode(&v);
    assert_eq!(decode(&bytes), v, "{name} round trip");
    let enc = time(|| {
        black_box(encode(black_box(&v)));
    });
    let dec = time(|| {
        black_box(decode(black_box(&bytes)));
    });
    let lz4 = lz4_flex::compress_prepend_size(&bytes);
    let dec_lz4 = time(|| {
        let raw = lz4_flex::decompress_size_prepended(black_box(&lz4)).unwrap();
        black_box(decode(&raw));
    });
    println!(
        "| {name:<11} | {:>6} | {:>9} | {:>11.2} | {:>11.2} | {:>16.2} |",
        bytes.len(),
        lz4.len(),
        enc.as_nanos() as f64 / 1000.0,
        dec.as_nanos() as f64 / 1000.0,
        dec_lz4.as_nanos() as f64 / 1000.0,
    );
}

fn main() {
    println!("| codec       |  bytes | lz4 bytes | encode (µs) | decode (µs) | lz4+decode (µs) |");
    println!("|-------------|--------|-----------|-------------|-------------|-----------------|");
    row(
        "postcard",
        |v| postcard::to_stdvec(v).unwrap(),
        |b| postcard::from_bytes(b).unwrap(),
    );
    row(
        "messagepack",
        |v| rmp_serde::to_vec_named(v).unwrap(),
        |b| rmp_serde::from_slice(b).unwrap(),
    );
    row(
        "json",
        |v| serde_json::to_vec(v).unwrap(),
        |b| serde_json::from_slice(b).unwrap(),
    );
}
