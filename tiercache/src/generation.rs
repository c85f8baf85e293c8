//! Invalidation generations: how a slow load anywhere is kept from undoing an invalidation.
//!
//! Loads are slow, and another instance may invalidate a key while one runs; storing the loaded
//! value afterwards would undo that invalidation for a whole TTL. So each namespace has a small
//! Redis hash of *generation tokens* (`tiercache#generation:{env}:{namespace}`: the `#` cannot
//! occur in a key space prefix, so no namespace's keys or clears ever touch it), with one field
//! per category and one, `*`, for the whole namespace.
//!
//! - Every change that makes values stale first sets a fresh random token: in the key's category
//!   for a key invalidation or an overwrite (`insert`), in the pattern's category for a pattern
//!   confined to one category, and in `*` for a clear or any other pattern.
//! - A load notes its category's token and the `*` token in the same round trip as its last look
//!   for the key (creating `*` if it is absent), and its value is stored by a script that `SET`s
//!   only if both tokens are unchanged and `*` exists. So a value loaded before an overlapping
//!   invalidation, by any instance, is never stored; neither is one whose load overlapped a
//!   Redis restart or a loss of the hash (`*` is gone then).
//!
//! Tokens are random 64-bit values, not counters, so a value can never come round again. The
//! price is that a load overlapping any invalidation in its category (or a clear) is not stored
//! (the next read loads again).
//!
//! The hash is a second key, in another hash slot than the data: Redis Cluster support will need
//! one hash per slot.

use std::collections::BTreeSet;

use crate::key::{Category, KeySpace};

/// The hash field that every load checks and every namespace-wide change moves.
pub(crate) const NAMESPACE_FIELD: &str = "*";

/// The tokens a load noted: its category's (empty while absent) and the namespace's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Generation {
    pub(crate) field: String,
    pub(crate) category: String,
    pub(crate) namespace: Option<String>,
}

/// `KEYS[1]` the data key, `KEYS[2]` the hash; `ARGV`: the category field, the noted category
/// and namespace tokens, the value, the TTL in ms. Returns 1 if stored.
pub(crate) const FILL_SCRIPT: &str = r"
local g = redis.call('HMGET', KEYS[2], ARGV[1], '*')
if g[2] and g[2] == ARGV[3] and (g[1] or '') == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  return 1
end
return 0
";

/// The generation hash of the key space with `prefix` (`{env}:{namespace}:`).
pub(crate) fn hash_key(prefix: &str) -> String {
    format!("tiercache#generation:{}", prefix.trim_end_matches(':'))
}

/// The field that a change of `key_or_pattern` (under `prefix`) moves, and that a load of a key
/// checks besides `*`: its category, when the text names one of the `known` ones (the
/// configured categories, so that the hash stays small whatever keys are invalidated), else `*`.
pub(crate) fn field<'a>(
    prefix: &str,
    known: &BTreeSet<String>,
    key_or_pattern: &'a str,
) -> &'a str {
    let Some(rest) = key_or_pattern.strip_prefix(prefix) else {
        return NAMESPACE_FIELD;
    };
    match rest.split_once(':') {
        Some((category, _)) if known.contains(category) => category,
        _ => NAMESPACE_FIELD,
    }
}

/// The fields of `categories` in the key space with `prefix`: their names as keys spell them.
pub(crate) fn known_fields<'a>(
    keys: &KeySpace,
    categories: impl IntoIterator<Item = &'a Category>,
) -> BTreeSet<String> {
    categories
        .into_iter()
        .filter_map(|c| {
            let key = keys.key(c, Vec::<&str>::new());
            let rest = key.as_str().strip_prefix(keys.prefix())?;
            Some(rest.split_once(':')?.0.to_owned())
        })
        .collect()
}

/// A fresh token.
pub(crate) fn token() -> String {
    format!("{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_categories_and_fall_back_to_the_namespace() {
        let s = KeySpace::new("prod", "api").unwrap();
        let odd = Category::new("a:b*");
        let known = known_fields(
            &s,
            [&Category::SCAN_RESULTS, &Category::IMAGE_METADATA, &odd],
        );
        let p = s.prefix();
        let field = |t: &str| field(p, &known, t).to_owned();
        let key = s.key(&Category::SCAN_RESULTS, ["a*", "b"]);
        assert_eq!(field(key.as_str()), "scan_results");
        let pattern = s.pattern(&Category::IMAGE_METADATA, ["x"]);
        assert_eq!(field(pattern.as_str()), "image_metadata");
        assert_eq!(field(s.namespace_pattern().as_str()), NAMESPACE_FIELD);
        assert_eq!(field(s.glob("scan_*").as_str()), NAMESPACE_FIELD);
        assert_eq!(field(s.glob("scan_results:*").as_str()), "scan_results");
        assert_eq!(field(s.glob("scan_results").as_str()), NAMESPACE_FIELD);
        assert_eq!(field("elsewhere:x"), NAMESPACE_FIELD);
        assert_eq!(field(s.key(&odd, ["k"]).as_str()), "a%3Ab%2A");
        // Not configured: shares the namespace field, so made-up names cannot grow the hash.
        assert_eq!(
            field(s.key(&Category::new("adhoc"), ["k"]).as_str()),
            NAMESPACE_FIELD
        );
        assert_eq!(field(s.glob("made-up:x").as_str()), NAMESPACE_FIELD);
    }

    #[test]
    fn the_hash_is_outside_every_key_space() {
        let h = hash_key(KeySpace::new("tiercache", "x").unwrap().prefix());
        assert_eq!(h, "tiercache#generation:tiercache:x");
        // `#` is not allowed in env or namespace, so no prefix (and no clear) covers it.
        assert!(KeySpace::new("tiercache#generation", "x").is_err());
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(token(), token());
    }
}
