//! Key building: the one place that turns names and untrusted input into Redis keys.
//!
//! Every key has the shape `{env}:{namespace}:{category}:{{parts}}`, for example
//! `prod:scans:image_metadata:{bkimminich%2Fjuice-shop:latest}`.
//!
//! - `env` and `namespace` come from configuration and are validated at build time (letters,
//!   digits, `_`, `-`, `.`), so the prefix is a literal that no glob can escape.
//! - The category and every part are **encoded**: bytes outside `[A-Za-z0-9._-]` become `%XX`, an
//!   empty part becomes `~`, and a part whose encoding is longer than [`MAX_PART_LEN`] becomes `#`
//!   followed by the hex SHA-256 of the raw part. `%`, `~` and `#` are themselves always escaped,
//!   so the mapping from (category, parts) to key is injective, an encoded part never contains the
//!   `:` separator, and it never contains the glob metacharacters `* ? [ ] \`: user input can never
//!   widen a SCAN pattern.
//! - The parts are wrapped in a Redis Cluster hash tag `{...}`, so keys built from the same parts
//!   land in one slot; `{` and `}` in input are escaped, so input cannot pick the slot.
//! - [`Tag`]s name groups of entries (`Tag::new("image", [name])`), encoded the same way; a key
//!   carries at most [`MAX_TAGS`] of them (see `coherence` for how a tag is invalidated).

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Longest encoded part kept verbatim; longer parts are replaced by their SHA-256, so a key stays
/// bounded in length whatever the input.
pub const MAX_PART_LEN: usize = 64;

/// Longest accepted `env` or `namespace`.
const MAX_PREFIX_LEN: usize = 64;

/// Most tags one entry may carry.
pub const MAX_TAGS: usize = 16;

/// A data category: selects the TTL (see [`TtlPolicy`](crate::TtlPolicy)) and groups statistics.
///
/// The library defines none: an application declares its own, usually as constants
/// (`const SCANS: Category = Category::from_static("scans");`), and gives each a TTL in the
/// builder; categories without one get the default TTL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Category(Cow<'static, str>);

impl Category {
    /// A category from a static name, usable in `const` items.
    pub const fn from_static(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }

    /// A category from any name. The name is encoded like any key part, so it is always safe.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self(name.into())
    }

    /// The category's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The name as a metrics label; free for categories made from static names.
    pub(crate) fn label(&self) -> Cow<'static, str> {
        self.0.clone()
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A complete Redis key, built by [`KeySpace::key`]. It remembers its category so that the cache
/// can pick the TTL and count hits per category, and the [`Tag`]s its entry carries.
///
/// Two keys are equal when they name the same Redis key, whatever their tags.
#[derive(Clone, Debug)]
pub struct Key {
    full: String,
    category: Category,
    /// Sorted and deduplicated; at most [`MAX_TAGS`].
    tags: Vec<Tag>,
    /// A TTL for this key's entries instead of its category's ([`Key::with_ttl`]).
    ttl: Option<Duration>,
}

impl Key {
    /// The key as sent to Redis.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The key's category.
    pub fn category(&self) -> &Category {
        &self.category
    }

    /// The tags that an entry stored under this key carries.
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// This key with `tags` added: an entry stored through it (by `get_with`, `insert`, ...)
    /// carries them, and [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) of any of them
    /// makes it stale. Reading through a key with the same tags keeps a Redis hit to one round
    /// trip (the tags' versions are fetched with the value).
    ///
    /// An entry carries at most [`MAX_TAGS`] distinct tags: through a key with more, values are
    /// read and loaded but never stored (each attempt is logged and counted as an error).
    pub fn with_tags(mut self, tags: impl IntoIterator<Item = Tag>) -> Key {
        self.tags.extend(tags);
        self.tags.sort_unstable();
        self.tags.dedup();
        self
    }

    /// This key with its own TTL: entries stored through it (by `get_with`, `insert`, ...) live
    /// `ttl` (with the cache's jitter) instead of their category's TTL. For a per-route or
    /// per-function TTL; it counts under its category all the same. Clamped to 1 ms ..= one
    /// year.
    pub fn with_ttl(mut self, ttl: Duration) -> Key {
        self.ttl = Some(ttl.clamp(Duration::from_millis(1), crate::ttl::MAX_TTL));
        self
    }

    /// The TTL set with [`with_ttl`](Self::with_ttl), if any.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Whether an entry may be stored under this key with its tags (at most [`MAX_TAGS`]).
    pub(crate) fn tags_fit(&self) -> bool {
        self.tags.len() <= MAX_TAGS
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.full == other.full
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.full.hash(state);
    }
}

/// A name for a group of entries, such as everything derived from one image: entries carry tags
/// ([`Key::with_tags`]), and invalidating a tag makes every entry that carries it stale at once,
/// in every instance, at a constant cost however many entries carry it.
///
/// Built like a key from a kind and untrusted parts (`Tag::new("image", [name])`), encoded the
/// same way, so input can neither collide with another tag nor escape its namespace: a tag is
/// relative to the cache that uses it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag of `kind` and `parts` (any untrusted text).
    pub fn new<I, P>(kind: &str, parts: I) -> Tag
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let mut s = String::with_capacity(kind.len() + 24);
        encode_part(kind, &mut s);
        s.push_str(":{");
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                s.push(':');
            }
            encode_part(part.as_ref(), &mut s);
        }
        s.push('}');
        Tag(s)
    }

    /// The encoded tag, as it appears in Redis after the namespace's tag prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A tag read back from a stored value or from the invalidation channel.
    pub(crate) fn from_encoded(encoded: String) -> Self {
        Self(encoded)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// A SCAN `MATCH` pattern that is confined to one key space: it always starts with the literal
/// `{env}:{namespace}:` prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(String);

impl Pattern {
    /// The pattern as sent to Redis.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Pattern {
    /// A pattern received from another instance over the invalidation channel.
    pub(crate) fn from_wire(pattern: String) -> Self {
        Self(pattern)
    }

    /// Whether `key` matches, with Redis glob semantics, or `None` when this pattern uses class
    /// syntax that is not matched here (`[^...]`, ranges, escapes inside `[...]`, an unclosed
    /// `[`). Callers that must not miss a match (the in-process tier's eviction) treat `None`
    /// as "may match".
    pub fn matches(&self, key: &str) -> Option<bool> {
        let tokens = glob_tokens(self.0.as_bytes())?;
        Some(glob_match(&tokens, key.as_bytes()))
    }
}

/// One element of a glob: each but `Star` matches exactly one byte.
#[derive(Debug)]
enum GlobToken<'a> {
    Star,
    Any,
    Byte(u8),
    /// `[...]` holding only literal bytes.
    Class(&'a [u8]),
}

/// Splits a glob into tokens; `None` for class syntax beyond plain literal sets.
fn glob_tokens(pat: &[u8]) -> Option<Vec<GlobToken<'_>>> {
    let mut out = Vec::with_capacity(pat.len());
    let mut i = 0;
    while i < pat.len() {
        match pat[i] {
            b'*' => {
                if !matches!(out.last(), Some(GlobToken::Star)) {
                    out.push(GlobToken::Star);
                }
            }
            b'?' => out.push(GlobToken::Any),
            b'\\' if i + 1 < pat.len() => {
                i += 1;
                out.push(GlobToken::Byte(pat[i]));
            }
            b'[' => {
                let len = pat[i + 1..].iter().position(|&c| c == b']')?;
                let set = &pat[i + 1..i + 1 + len];
                if set.is_empty() || set[0] == b'^' || set.contains(&b'-') || set.contains(&b'\\') {
                    return None;
                }
                out.push(GlobToken::Class(set));
                i += len + 1;
            }
            c => out.push(GlobToken::Byte(c)),
        }
        i += 1;
    }
    Some(out)
}

/// Wildcard matching with single-star backtracking: linear in practice, and exact because every
/// token other than `*` consumes exactly one byte.
fn glob_match(tokens: &[GlobToken<'_>], s: &[u8]) -> bool {
    let (mut t, mut i) = (0, 0);
    // Where the last `*` was, and the position in `s` it is currently taken to end at.
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let one = match tokens.get(t) {
            Some(GlobToken::Any) => true,
            Some(GlobToken::Byte(b)) => *b == s[i],
            Some(GlobToken::Class(set)) => set.contains(&s[i]),
            Some(GlobToken::Star) => {
                star = Some((t, i));
                t += 1;
                continue;
            }
            None => false,
        };
        if one {
            t += 1;
            i += 1;
        } else if let Some((st, si)) = star {
            // Let the last `*` swallow one more byte and retry from there.
            star = Some((st, si + 1));
            t = st + 1;
            i = si + 1;
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|tok| matches!(tok, GlobToken::Star))
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key space of one cache: the `{env}:{namespace}:` prefix and the rules for what follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpace {
    /// `"{env}:{namespace}:"`, validated to hold no glob metacharacter.
    prefix: String,
}

impl KeySpace {
    /// A key space for `env` (such as `prod`) and `namespace` (such as `scan-api`).
    ///
    /// Both must be 1 to 64 characters of `[A-Za-z0-9_.-]`; the error names the setting.
    pub fn new(env: &str, namespace: &str) -> Result<Self> {
        validate_prefix_part("env_prefix", env)?;
        validate_prefix_part("namespace", namespace)?;
        Ok(Self {
            prefix: format!("{env}:{namespace}:"),
        })
    }

    /// The literal prefix every key of this space starts with, `"{env}:{namespace}:"`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `"{env}:{namespace}"`: the prefix without its last colon, the `namespace` label of this
    /// cache's metrics.
    pub fn label(&self) -> &str {
        self.prefix.strip_suffix(':').unwrap_or(&self.prefix)
    }

    /// The key for `category` and `parts`. Parts may be any untrusted text.
    pub fn key<I, P>(&self, category: &Category, parts: I) -> Key
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let mut full = self.category_prefix(category);
        full.push('{');
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                full.push(':');
            }
            encode_part(part.as_ref(), &mut full);
        }
        full.push('}');
        Key {
            full,
            category: category.clone(),
            tags: Vec::new(),
            ttl: None,
        }
    }

    /// Matches every key of `category` whose parts start with `leading` (all of that category
    /// when `leading` is empty). `leading` is untrusted text, matched literally.
    pub fn pattern<I, P>(&self, category: &Category, leading: I) -> Pattern
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let mut pat = self.category_prefix(category);
        pat.push('{');
        let mut any = false;
        for (i, part) in leading.into_iter().enumerate() {
            if i > 0 {
                pat.push(':');
            }
            encode_part(part.as_ref(), &mut pat);
            any = true;
        }
        if any {
            // The leading parts end either the key (`}`) or a part (`:`), never mid-part.
            pat.push_str("[:}]");
        }
        pat.push('*');
        Pattern(pat)
    }

    /// Matches every key of this key space (the namespace), and nothing outside it.
    pub fn namespace_pattern(&self) -> Pattern {
        Pattern(format!("{}*", self.prefix))
    }

    /// A caller-supplied glob (for an admin "list keys" route), confined to this key space: the
    /// result is the literal prefix followed by `glob`, so it can only match keys of this
    /// namespace, whatever `glob` holds.
    pub fn glob(&self, glob: &str) -> Pattern {
        Pattern(format!("{}{glob}", self.prefix))
    }

    /// True if `key` belongs to this key space.
    pub fn contains(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
    }

    /// The Redis key that holds the current version of `tag` in this key space:
    /// `tiercache#tag:{env}:{namespace}:{tag}`. The `#` cannot occur in a prefix, so tag keys lie
    /// outside every key space (no pattern or clear ever touches them).
    pub(crate) fn tag_key(&self, tag: &Tag) -> String {
        let mut s = self.tag_prefix();
        s.push_str(tag.as_str());
        s
    }

    /// `tiercache#tag:{env}:{namespace}:`, what every tag key of this space starts with.
    pub(crate) fn tag_prefix(&self) -> String {
        format!("tiercache#tag:{}", self.prefix)
    }

    fn category_prefix(&self, category: &Category) -> String {
        let mut s = String::with_capacity(self.prefix.len() + category.name().len() + 40);
        s.push_str(&self.prefix);
        encode_part(category.name(), &mut s);
        s.push(':');
        s
    }
}

fn validate_prefix_part(setting: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::config(setting, "must not be empty"));
    }
    if value.len() > MAX_PREFIX_LEN {
        return Err(Error::config(
            setting,
            format!("must be at most {MAX_PREFIX_LEN} characters"),
        ));
    }
    if let Some(c) = value.chars().find(|c| !is_unreserved(*c)) {
        return Err(Error::config(
            setting,
            format!("{value:?} contains {c:?}; use only letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Appends the encoding of one part (see the module docs) to `out`.
fn encode_part(part: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if part.is_empty() {
        out.push('~');
        return;
    }
    let encoded_len: usize = part
        .bytes()
        .map(|b| if is_unreserved(b as char) { 1 } else { 3 })
        .sum();
    if encoded_len > MAX_PART_LEN {
        out.push('#');
        for b in Sha256::digest(part.as_bytes()) {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
        return;
    }
    for b in part.bytes() {
        if is_unreserved(b as char) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SCAN_RESULTS: Category = Category::from_static("scan_results");
    const IMAGE_METADATA: Category = Category::from_static("image_metadata");
    const SESSIONS: Category = Category::from_static("sessions");

    fn space() -> KeySpace {
        KeySpace::new("test", "ns").unwrap()
    }

    fn glob(pat: &str, s: &str) -> bool {
        Pattern(pat.to_owned()).matches(s).unwrap()
    }

    #[test]
    fn glob_semantics() {
        assert!(glob("a*", "a"));
        assert!(glob("a*", "abc"));
        assert!(!glob("a*", "ba"));
        assert!(glob("*c", "abc"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("a[:}]*", "a:x"));
        assert!(glob("a[:}]*", "a}"));
        assert!(!glob("a[:}]*", "ab"));
        assert!(glob("a\\*b", "a*b"));
        assert!(!glob("a\\*b", "axb"));
        assert!(glob("**", ""));
        assert!(!glob("?", ""));
        assert!(glob("*a*a*a*a*a*a*b", &format!("{}b", "a".repeat(200))));
        for unsupported in ["[^a]", "[a-z]", "[\\]]", "a["] {
            assert_eq!(
                Pattern(unsupported.into()).matches("a"),
                None,
                "{unsupported}"
            );
        }
    }

    #[test]
    fn shape_of_a_key() {
        let k = space().key(&IMAGE_METADATA, ["bkimminich/juice-shop", "v1"]);
        assert_eq!(
            k.as_str(),
            "test:ns:image_metadata:{bkimminich%2Fjuice-shop:v1}"
        );
        assert_eq!(k.category(), &IMAGE_METADATA);
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        let k = space().key(&SCAN_RESULTS, ["*?[]\\{}:"]);
        assert_eq!(
            k.as_str(),
            "test:ns:scan_results:{%2A%3F%5B%5D%5C%7B%7D%3A}"
        );
    }

    #[test]
    fn empty_and_long_parts() {
        let s = space();
        assert_eq!(s.key(&SESSIONS, [""]).as_str(), "test:ns:sessions:{~}");
        assert_eq!(
            s.key(&SESSIONS, Vec::<&str>::new()).as_str(),
            "test:ns:sessions:{}"
        );
        let long = "x".repeat(1000);
        let k = s.key(&SESSIONS, [long.as_str()]);
        assert_eq!(k.as_str().len(), "test:ns:sessions:{#}".len() + 64);
    }

    #[test]
    fn prefix_validation_names_the_setting() {
        let e = KeySpace::new("", "ns").unwrap_err();
        assert!(e.to_string().contains("env_prefix"), "{e}");
        let e = KeySpace::new("prod", "a*b").unwrap_err();
        assert!(e.is_config());
        assert!(e.to_string().contains("namespace"), "{e}");
        assert!(KeySpace::new("prod", &"n".repeat(65)).is_err());
    }

    #[test]
    fn pattern_matches_exact_and_longer_but_not_siblings() {
        let s = space();
        let p = s.pattern(&IMAGE_METADATA, ["a"]);
        let m = |parts: &[&str]| p.matches(s.key(&IMAGE_METADATA, parts).as_str()).unwrap();
        assert!(m(&["a"]));
        assert!(m(&["a", "v1"]));
        assert!(!m(&["ab"]));
        assert!(!m(&["b", "a"]));
        assert!(!p.matches(s.key(&SCAN_RESULTS, ["a"]).as_str()).unwrap());
    }

    #[test]
    fn tags_are_encoded_deduplicated_and_bounded() {
        let s = space();
        let t = Tag::new("image", ["a*:b}", "v1"]);
        assert_eq!(t.as_str(), "image:{a%2A%3Ab%7D:v1}");
        assert_eq!(
            s.tag_key(&t),
            "tiercache#tag:test:ns:image:{a%2A%3Ab%7D:v1}"
        );
        assert_ne!(Tag::new("a:b", ["c"]), Tag::new("a", ["b:c"]));
        assert_ne!(Tag::new("a", ["b", "c"]), Tag::new("a", ["b:c"]));
        let k = s.key(&SESSIONS, ["k"]).with_tags([
            Tag::new("x", ["2"]),
            Tag::new("x", ["1"]),
            Tag::new("x", ["2"]),
        ]);
        assert_eq!(k.tags(), &[Tag::new("x", ["1"]), Tag::new("x", ["2"])]);
        assert!(k.tags_fit());
        assert_eq!(
            k,
            s.key(&SESSIONS, ["k"]),
            "tags do not change which key it is"
        );
        let many = (0..=MAX_TAGS).map(|i| Tag::new("t", [i.to_string()]));
        assert!(!s.key(&SESSIONS, ["k"]).with_tags(many).tags_fit());
        // Tag keys are outside every key space, so no pattern or clear touches them.
        assert!(!s.contains(&s.tag_key(&t)));
        assert!(s.namespace_pattern().matches(&s.tag_key(&t)) == Some(false));
    }

    fn part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z*?\\[\\]\\\\{}:%~#/ ]{0,12}",
            any::<String>(),
            "[a-z]{60,80}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Different (category, parts) never give the same key.
        #[test]
        fn keys_are_injective(
            c1 in "[a-z:*]{1,6}", p1 in prop::collection::vec(part(), 0..4),
            c2 in "[a-z:*]{1,6}", p2 in prop::collection::vec(part(), 0..4),
        ) {
            let s = space();
            let k1 = s.key(&Category::new(c1.clone()), &p1);
            let k2 = s.key(&Category::new(c2.clone()), &p2);
            prop_assert_eq!(k1.as_str() == k2.as_str(), c1 == c2 && p1 == p2);
        }

        /// Every key starts with the prefix, holds no glob metacharacter after it, and has a
        /// bounded length.
        #[test]
        fn keys_stay_under_their_prefix(c in any::<String>(), parts in prop::collection::vec(part(), 0..6)) {
            let s = space();
            let k = s.key(&Category::new(c), &parts);
            prop_assert!(k.as_str().starts_with("test:ns:"));
            let rest = &k.as_str()["test:ns:".len()..];
            prop_assert!(!rest.contains(['*', '?', '[', ']', '\\']));
            prop_assert!(rest.len() <= (MAX_PART_LEN + 1) * (parts.len() + 1) + parts.len() + 3);
            prop_assert!(s.namespace_pattern().matches(k.as_str()).unwrap());
        }

        /// Different (kind, parts) never give the same tag.
        #[test]
        fn tags_are_injective(
            k1 in "[a-z:{}*]{1,6}", p1 in prop::collection::vec(part(), 0..4),
            k2 in "[a-z:{}*]{1,6}", p2 in prop::collection::vec(part(), 0..4),
        ) {
            let t1 = Tag::new(&k1, &p1);
            let t2 = Tag::new(&k2, &p2);
            prop_assert_eq!(t1 == t2, k1 == k2 && p1 == p2);
            prop_assert!(!t1.as_str().contains(['*', '?', '[', ']', '\\']));
        }

        /// A pattern built from untrusted leading parts matches a key exactly when the key's parts
        /// start with them.
        #[test]
        fn patterns_match_exactly_their_prefix(
            lead in prop::collection::vec(part(), 1..3),
            parts in prop::collection::vec(part(), 0..4),
        ) {
            let s = space();
            let p = s.pattern(&SCAN_RESULTS, &lead);
            let k = s.key(&SCAN_RESULTS, &parts);
            let expected = parts.len() >= lead.len() && parts[..lead.len()] == lead[..];
            prop_assert_eq!(p.matches(k.as_str()).unwrap(), expected);
        }
    }
}
