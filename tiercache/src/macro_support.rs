//! What `#[cached]` (the `macros` feature) expands to, exported as `tiercache::__private`.
//!
//! Not public API: only the macro's expansion names these items, and they may change with any
//! release. They live here rather than in the macro crate so that a user of `#[cached]` needs no
//! dependency but `tiercache`: the expansion names only `::tiercache::__private::...` (and
//! `::core` / `::std`).
//!
//! # The default key
//! A `#[cached]` fn without a `key` template is cached under
//! `cache.key(category, [name, hash])`, where `hash` is the first [`KEY_HASH_HEX_LEN`] hex
//! digits of the SHA-256 of the [postcard] encoding of the tuple `(scope, types, args)`:
//! - `scope`: `module_path!()::fn_name`, or the fn's `name = "..."` option alone when it has one
//!   (a name chosen to stay put when the fn moves);
//! - `types`: `core::any::type_name` of `Self` for methods with a receiver and of each type
//!   parameter, so that two impls' methods, or two instances of a generic fn, never share
//!   entries (empty for a plain free fn);
//! - `args`: a tuple of the key arguments (const generic parameters first, then every argument
//!   but the receiver, the cache argument and the skipped ones, in order), each serialized by
//!   its `Serialize` impl.
//!
//! postcard's wire format is stable since its 1.0, and SHA-256 is SHA-256, so the same values
//! give the same key in every process and build. The key changes when the fn is renamed or moved
//! to another module or crate (unless it has a `name`), when the key arguments change in number,
//! order or serialized form (a field added to a struct argument, a `u32` that becomes a
//! `String`; not a renamed field, since postcard does not write names), and for methods and
//! generic fns when the compiler prints a type name differently (only across compiler versions).
//! A changed key is a cold cache, never a wrong value. Arguments must serialize
//! deterministically: a `HashMap` is written in its iteration order, which differs between
//! processes, so use a `BTreeMap`, `skip` it, or give a `key` template.
//!
//! # Errors of a `Result` fn
//! [`Cache::try_get_with`] shares one error among every caller of a coalesced load, as an
//! `Arc<E>`. A `#[cached]` fn returns its own `E`, by value, with no `Clone` bound: each call's
//! load writes its error into the call's own slot and hands the cache a marker instead. A call
//! whose own load failed returns its own error; a call that waited on another call's failed load
//! (and so has no error of its own) runs its own body, uncached, and returns what that gives. So
//! errors are never cached, and while a source fails, every waiting call tries it once.

use std::future::Future;
use std::pin::pin;
use std::sync::LazyLock;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::key::{Category, Key};
use crate::log_limiter::LogLimiter;

/// How many hex digits of the SHA-256 the default key keeps (128 bits).
pub const KEY_HASH_HEX_LEN: usize = 32;

/// Implemented by every `Serialize` type: the bound the expansion checks on each argument of
/// the default key (one [`KeyHasher::arg`] call per argument), to name the argument and say what
/// to do when it cannot be part of a key.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a #[cached] key: it does not implement `serde::Serialize`",
    label = "this argument is part of the default key",
    note = "derive `serde::Serialize` for `{Self}`, leave the argument out of the key with `skip(arg)`, or give a `key = \"...\"` template"
)]
pub trait KeyArg {
    /// Appends the postcard encoding of `self` to `out`.
    fn encode(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error>;
}

impl<T: Serialize + ?Sized> KeyArg for T {
    #[inline]
    fn encode(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_extend(self, out)
    }
}

/// What a value cached by `#[cached]` must be: what [`Cache::get_with`] asks of it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached by #[cached]",
    label = "the value this fn returns, which the cache stores",
    note = "a cached value must be `serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static`, as for `Cache::get_with`"
)]
pub trait Value: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T> Value for T where T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

/// A `Result` seen through any alias (`io::Result<T>`, `anyhow::Result<T>`): the return type of
/// a fn whose errors are not cached.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `Result`",
    label = "#[cached(result)] caches only the `Ok` values of a fn returning `Result<T, E>`",
    note = "remove the `result` flag to cache the whole return value"
)]
pub trait Outcome: Sized {
    /// The cached `T`.
    type Ok;
    /// The error, never cached.
    type Err;
    /// `self` as a plain `Result`.
    fn into_result(self) -> Result<Self::Ok, Self::Err>;
    /// A plain `Result` as `Self`.
    fn from_result(result: Result<Self::Ok, Self::Err>) -> Self;
}

impl<T, E> Outcome for Result<T, E> {
    type Ok = T;
    type Err = E;

    #[inline(always)]
    fn into_result(self) -> Self {
        self
    }

    #[inline(always)]
    fn from_result(result: Self) -> Self {
        result
    }
}

/// The default key's hash (see the module docs) of `(scope, types, args)`: hex SHA-256 of its
/// postcard encoding, cut to [`KEY_HASH_HEX_LEN`] digits. An error only when `args`'
/// `Serialize` impl fails (a sequence of unknown length, a custom impl that refuses).
pub fn key_hash<A: Serialize + ?Sized>(
    scope: &str,
    types: &[&str],
    args: &A,
) -> Result<String, postcard::Error> {
    let bytes = postcard::to_stdvec(&(scope, types, args))?;
    Ok(hex_sha256(&bytes))
}

fn hex_sha256(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(KEY_HASH_HEX_LEN);
    for b in &digest[..KEY_HASH_HEX_LEN / 2] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    out
}

/// Builds the default key one argument at a time, so that each argument's bound is checked (and
/// reported) on its own. The bytes are those of [`key_hash`]'s tuple: postcard writes a tuple as
/// its elements one after the other.
#[derive(Debug)]
pub struct KeyHasher {
    scope: &'static str,
    /// The encoding so far, or why it failed.
    bytes: Result<Vec<u8>, postcard::Error>,
}

impl KeyHasher {
    /// A key for the fn `scope` whose type parameters (and `Self`) are named `types`.
    #[inline]
    pub fn new(scope: &'static str, types: &[&str]) -> Self {
        let bytes = postcard::to_extend(&(scope, types), Vec::with_capacity(64));
        Self { scope, bytes }
    }

    /// Adds the next argument.
    #[inline]
    pub fn arg<T: KeyArg + ?Sized>(mut self, arg: &T) -> Self {
        self.bytes = self.bytes.and_then(|out| arg.encode(out));
        self
    }

    /// The default key, `cache.key(category, [name, hash])`; `None`, with a rate-limited
    /// warning, when an argument could not be serialized: the call then runs uncached.
    pub fn key(self, cache: &Cache, category: &Category, name: &str) -> Option<Key> {
        match self.bytes {
            Ok(bytes) => Some(cache.key(category, [name, hex_sha256(&bytes).as_str()])),
            Err(e) => {
                if let Some(suppressed) = UNHASHABLE.check() {
                    tracing::warn!(
                        function = self.scope,
                        error = %e,
                        suppressed,
                        "the arguments of a #[cached] fn cannot be serialized for its key; the call runs uncached"
                    );
                }
                None
            }
        }
    }
}

/// One warning per interval for arguments that cannot be serialized: the same fn fails the
/// same way on every call.
static UNHASHABLE: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(Duration::from_secs(60)));

/// `cache.get_with(key, init)`, or `init` alone without a key. `T` is named by the expansion
/// (the fn's return type), so the body's type is known where it is checked.
#[inline]
pub async fn get_with<T, F>(cache: &Cache, key: Option<&Key>, init: F) -> T
where
    T: Value,
    F: Future<Output = T>,
{
    match key {
        Some(key) => cache.get_with(key, init).await,
        None => init.await,
    }
}

/// The marker a failed load hands [`Cache::try_get_with`] instead of its error (see the module
/// docs).
#[derive(Debug)]
struct LoadFailed;

/// `cache.try_get_with(key, init)` with each caller's own error, by value (see the module
/// docs); `init` alone without a key.
#[inline]
pub async fn try_get_with<R, F>(cache: &Cache, key: Option<&Key>, init: F) -> R
where
    R: Outcome,
    R::Ok: Value,
    F: Future<Output = R>,
{
    let Some(key) = key else {
        return init.await;
    };
    // `try_get_with` runs `init` to completion or not at all (a waiter's is never polled), so
    // `init` may still be awaited below exactly when no result of ours came back.
    let mut init = pin!(init);
    let mut own_error = None;
    let shared = cache
        .try_get_with(key, async {
            init.as_mut().await.into_result().map_err(|e| {
                own_error = Some(e);
                LoadFailed
            })
        })
        .await;
    match (shared, own_error) {
        (Ok(value), _) => R::from_result(Ok(value)),
        (Err(_), Some(e)) => R::from_result(Err(e)),
        // Another call's load failed while we waited: its error is not ours to return.
        (Err(_), None) => init.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequence of unknown length, which postcard cannot write.
    struct Unsized;

    impl Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq((0..3).filter(|_| true))
        }
    }

    #[test]
    fn the_hash_is_postcard_then_sha256_cut_to_32_hex_digits() {
        let h = key_hash("it::f", &[], &(&42u64, &"x")).unwrap();
        assert_eq!(h.len(), KEY_HASH_HEX_LEN);
        let bytes = postcard::to_stdvec(&("it::f", Vec::<&str>::new(), (42u64, "x"))).unwrap();
        let full = Sha256::digest(&bytes);
        let hex: String = full.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(h, hex[..KEY_HASH_HEX_LEN]);
        // References and owned values encode alike; scope, types and values all count.
        assert_eq!(
            h,
            key_hash("it::f", &[], &(42u64, "x".to_string())).unwrap()
        );
        assert_ne!(h, key_hash("it::g", &[], &(42u64, "x")).unwrap());
        assert_ne!(h, key_hash("it::f", &["u8"], &(42u64, "x")).unwrap());
        assert_ne!(h, key_hash("it::f", &[], &(43u64, "x")).unwrap());
    }

    #[test]
    fn the_hasher_writes_the_bytes_of_the_tuple() {
        let by_parts = KeyHasher::new("it::f", &["T"]).arg(&42u64).arg("x");
        let bytes = postcard::to_stdvec(&("it::f", ["T"].as_slice(), (42u64, "x"))).unwrap();
        assert_eq!(by_parts.bytes.unwrap(), bytes);
        assert!(KeyHasher::new("it::f", &[]).arg(&Unsized).bytes.is_err());
    }

    #[test]
    fn an_argument_that_cannot_be_serialized_gives_no_key() {
        assert!(key_hash("it::f", &[], &(Unsized,)).is_err());
    }
}
