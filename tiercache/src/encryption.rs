//! Encrypted categories: the values of a category marked sensitive are stored in Redis
//! encrypted, and a value that does not authenticate is never served.
//!
//! A category is marked with [`CacheBuilder::sensitive`](crate::CacheBuilder::sensitive) and the
//! keys are given with [`CacheBuilder::encryption`](crate::CacheBuilder::encryption) (or
//! `CACHE_ENCRYPTION_KEYS` through [`CacheBuilder::from_env`](crate::CacheBuilder::from_env)).
//! Keys come from configuration: [`Encryption::parse`] reads a comma-separated list of 32-byte
//! keys, each 64 hex digits or base64 (`openssl rand -base64 32`). They never appear in a log
//! line, an error or a `Debug` output (which says how many keys there are, nothing else).
//!
//! The format, the key rotation and the handling of failures are documented on
//! [`Encryption`], for users; this module holds it, and [`Protection`]: which categories a cache
//! encrypts, applied by `cache` on every write to and read from Redis.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::Generate;
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::codec::ENCRYPTED_VERSION;
use crate::error::{Error, Result};
use crate::key::{Category, Key};
use crate::log_limiter::LogLimiter;

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Version byte, key id, nonce.
const HEADER_LEN: usize = 2 + NONCE_LEN;

/// Bytes an encrypted value adds to the envelope it carries.
pub const ENCRYPTION_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// At most one log line per this interval about values that failed to authenticate.
pub const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The keys of the encrypted categories: the first encrypts, every one decrypts.
///
/// # The AEAD
/// XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`). Each value gets a fresh random 192-bit
/// nonce from the OS RNG: at that size random nonces never repeat in practice, however many
/// values one key encrypts (AES-GCM's 96-bit nonce would limit a key to about 2³² writes). The
/// **associated data is the full Redis key name** (`{env}:{namespace}:{category}:{{parts}}`), so
/// a value copied, renamed or restored under another key (another user's session, another
/// environment) fails to authenticate there.
///
/// # Stored format
/// An encrypted value is envelope version 3 and 42 bytes longer than the plain
/// envelope (version 1 or 2, already compressed) it carries:
///
/// | bytes | meaning |
/// |-------|---------|
/// | 0     | 3: encrypted |
/// | 1     | key id: the first byte of SHA-256(`"tiercache key id"` ‖ key) |
/// | 2..26 | nonce |
/// | ...   | the encrypted envelope (its tags and versions included: tag names are not in clear) |
/// | last 16 | Poly1305 tag |
///
/// Key names are not encrypted (Redis needs them): put no secret in a key part (hash a session
/// token before using it as a part). Lengths are not hidden either.
///
/// # Rotation: a key id rather than trying each key
/// Writes use the first key of the list; reads open a value with the key its id byte names
/// (with every key of that id, should two keys of the list share one: 1 in 256). The id costs
/// one byte per value and saves, for every value written under an older key, one failed
/// decryption per newer key; a value under a key the cache does not have is refused without any
/// decryption at all. It says nothing usable about the key (8 bits of a hash of 256 secret
/// ones).
///
/// To rotate without a single miss: add the new key second (`old,new`) on every instance, then
/// put it first (`new,old`), and once the longest TTL has passed drop the old one (`new`).
/// Deployed straight as `new,old`, an instance that still has `old` alone reads the new
/// values as failures (a miss, and the value deleted) until it gets the new key: correct, only
/// slower.
///
/// # Failures
/// A value of a sensitive category that is not encrypted, is encrypted under a key the cache
/// does not have, or does not authenticate, is read as a miss and deleted, never returned as an
/// error: it is counted ([`Stats::unauthenticated_values`](crate::Stats::unauthenticated_values),
/// `tiercache_unauthenticated_values_total`) and logged at most once per
/// [`REJECTION_LOG_INTERVAL`] (with the number of others since).
///
/// A sensitive category without keys is never cached in Redis: every read is a miss
/// (`BYPASS`), nothing is stored, and the cache says so once, when it is built. Not caching is
/// always safe; storing in clear is what the setting exists to prevent, and refusing to start
/// would make a missing secret an outage.
///
/// In [`Mode::Standalone`](crate::Mode::Standalone) nothing leaves the process and nothing is
/// encrypted: the in-process tier holds decoded values in every mode (process memory), and the
/// encoded bytes a standalone `insert` keeps there are no more exposed than those.
///
/// # Example
/// ```no_run
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // CACHE_ENCRYPTION_KEYS=<new>,<old>: each made with `openssl rand -base64 32`.
/// let encryption = tiercache::Encryption::parse(&std::env::var("CACHE_ENCRYPTION_KEYS")?)?;
/// println!("{encryption:?}"); // Encryption { keys: 2, .. }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Encryption {
    /// Shared by every clone (a builder's, a cache's): the keys are copied once, and wiped
    /// from memory when the last holder drops them (the cipher's `zeroize`).
    keys: Arc<[Slot]>,
}

/// One key, ready to use.
struct Slot {
    id: u8,
    aead: XChaCha20Poly1305,
}

/// A key list that cannot be used. Says which key (by position, from 1) and why, never what
/// it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The list is empty.
    #[error("no encryption key given")]
    NoKeys,
    /// A key is neither hex nor base64.
    #[error(
        "encryption key {position} is neither 64 hex digits nor base64 (make one with `openssl rand -base64 32`)"
    )]
    Encoding {
        /// Its position in the list, from 1.
        position: usize,
    },
    /// A key is not 32 bytes long.
    #[error(
        "encryption key {position} is {len} bytes long; a key is 32 bytes (64 hex digits, or 44 base64 characters)"
    )]
    Length {
        /// Its position in the list, from 1.
        position: usize,
        /// Its length in bytes, once decoded.
        len: usize,
    },
    /// A key is given twice (a rotation gone wrong: `old,old`).
    #[error("encryption key {position} is the same as key {first}")]
    Repeated {
        /// Its position in the list, from 1.
        position: usize,
        /// The position of its first occurrence.
        first: usize,
    },
}

/// Why a stored value was refused by [`Encryption::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The bytes are not an encrypted value.
    #[error("not encrypted, in a sensitive category")]
    NotEncrypted,
    /// Encrypted under a key this cache does not have (dropped from the list, another
    /// deployment's, or none configured).
    #[error("encrypted under a key this cache does not have")]
    UnknownKey,
    /// The tag does not match: stored under another key name, altered, or cut short.
    #[error("does not authenticate under this key name (copied from another key, or altered)")]
    Unauthentic,
}

impl Encryption {
    /// Keys given as bytes, 32 each; the first encrypts new values.
    pub fn new<I, K>(keys: I) -> Result<Self, KeyError>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let mut slots: Vec<Slot> = Vec::new();
        let mut ids: Vec<[u8; 32]> = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let key = key.as_ref();
            let position = i + 1;
            if key.len() != KEY_LEN {
                return Err(KeyError::Length {
                    position,
                    len: key.len(),
                });
            }
            // Compared by digest: the list keeps no second copy of the keys themselves.
            let digest: [u8; 32] = Sha256::new()
                .chain_update(b"tiercache key id")
                .chain_update(key)
                .finalize()
                .into();
            if let Some(first) = ids.iter().position(|d| *d == digest) {
                return Err(KeyError::Repeated {
                    position,
                    first: first + 1,
                });
            }
            let aead = XChaCha20Poly1305::new_from_slice(key).map_err(|_| KeyError::Length {
                position,
                len: key.len(),
            })?;
            slots.push(Slot {
                id: digest[0],
                aead,
            });
            ids.push(digest);
        }
        if slots.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(Self { keys: slots.into() })
    }

    /// Keys from a comma-separated list (as in `CACHE_ENCRYPTION_KEYS`), each 64 hex digits or
    /// base64 (standard or URL-safe, padded or not) of 32 bytes; spaces around a key and empty
    /// items are ignored. The first key encrypts new values.
    pub fn parse(list: &str) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for (i, item) in list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            keys.push(decode_key(item).ok_or(KeyError::Encoding { position: i + 1 })?);
        }
        Self::new(keys)
    }

    /// How many keys there are.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Encrypts `plaintext` for the Redis key named `key`, with the first key: what the cache
    /// stores for a sensitive category (there, `plaintext` is the value's envelope). Fails
    /// only if the OS has no random numbers to give.
    pub fn seal(&self, key: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let slot = self
            .keys
            .first()
            .ok_or_else(|| Error::Encode("no encryption key".into()))?;
        let nonce = XNonce::try_generate()
            .map_err(|e| Error::Encode(format!("no random nonce from the OS: {e}")))?;
        let mut out = Vec::with_capacity(ENCRYPTION_OVERHEAD + plaintext.len());
        out.extend_from_slice(&[ENCRYPTED_VERSION, slot.id]);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = slot
            .aead
            .encrypt_inout_detached(&nonce, key.as_bytes(), (&mut out[HEADER_LEN..]).into())
            .map_err(|_| Error::Encode("value too long to encrypt".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// The plaintext of a value [`seal`](Self::seal)ed for the Redis key named `key`, if it
    /// authenticates under that name with one of the keys.
    pub fn open(&self, key: &str, stored: &[u8]) -> Result<Vec<u8>, Rejected> {
        let [ENCRYPTED_VERSION, id, rest @ ..] = stored else {
            return Err(Rejected::NotEncrypted);
        };
        let (nonce, rest) = rest
            .split_at_checked(NONCE_LEN)
            .ok_or(Rejected::Unauthentic)?;
        let (ciphertext, tag) = rest
            .split_at_checked(
                rest.len()
                    .checked_sub(TAG_LEN)
                    .ok_or(Rejected::Unauthentic)?,
            )
            .ok_or(Rejected::Unauthentic)?;
        let nonce = XNonce::try_from(nonce).map_err(|_| Rejected::Unauthentic)?;
        let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| Rejected::Unauthentic)?;
        let mut rejected = Rejected::UnknownKey;
        for slot in self.keys.iter().filter(|s| s.id == *id) {
            let mut plain = ciphertext.to_vec();
            match slot.aead.decrypt_inout_detached(
                &nonce,
                key.as_bytes(),
                plain.as_mut_slice().into(),
                &tag,
            ) {
                Ok(()) => return Ok(plain),
                Err(_) => rejected = Rejected::Unauthentic,
            }
        }
        Err(rejected)
    }
}

impl fmt::Debug for Encryption {
    /// The number of keys; never the keys, nor anything derived from them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryption")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// One key's bytes from hex or base64; `None` if it is neither. Hex digits of an even length
/// are hex (so that a key a digit short is reported as too short), except 44 of them, which is
/// the length of a padded base64 key.
fn decode_key(text: &str) -> Option<Vec<u8>> {
    let hex = text.len().is_multiple_of(2) && text.len() != 44;
    if hex && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        return text
            .as_bytes()
            .chunks(2)
            .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
            .collect();
    }
    [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD]
        .into_iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// How one category's values are stored in Redis.
pub(crate) enum Treatment<'a> {
    /// As encoded.
    Plain,
    /// Encrypted with these keys.
    Encrypted(&'a Encryption),
    /// Not at all: sensitive, and there are no keys.
    NotCached,
}

/// A cache's sensitive categories and keys: what it encrypts, and how it judges what it reads.
#[derive(Debug)]
pub(crate) struct Protection {
    encryption: Option<Encryption>,
    /// A handful at most: a scan of short names is cheaper than hashing.
    sensitive: Vec<Category>,
    /// Standalone: values never leave the process, and nothing is encrypted.
    in_process: bool,
    /// Shared by every read: an attack (or a key missing from one instance) is one line per
    /// interval, not one per read.
    rejections: LogLimiter,
}

impl Protection {
    pub(crate) fn new(
        encryption: Option<Encryption>,
        sensitive: Vec<Category>,
        in_process: bool,
    ) -> Self {
        Self {
            encryption,
            sensitive,
            in_process,
            rejections: LogLimiter::new(REJECTION_LOG_INTERVAL),
        }
    }

    fn is_sensitive(&self, category: &Category) -> bool {
        let name = category.name();
        self.sensitive
            .iter()
            // Categories made from one static name share its pointer: no compare needed.
            .any(|c| std::ptr::eq(c.name(), name) || c.name() == name)
    }

    /// How values of `category` are stored in Redis.
    pub(crate) fn treatment(&self, category: &Category) -> Treatment<'_> {
        if self.in_process || !self.is_sensitive(category) {
            return Treatment::Plain;
        }
        match &self.encryption {
            Some(e) => Treatment::Encrypted(e),
            None => Treatment::NotCached,
        }
    }

    /// Whether `key`'s values are kept out of the cache (sensitive, without keys).
    pub(crate) fn not_cached(&self, key: &Key) -> bool {
        matches!(self.treatment(key.category()), Treatment::NotCached)
    }

    /// The bytes to store for `key` given its `envelope`: encrypted for a sensitive category;
    /// `Ok(None)` for one that is not cached.
    pub(crate) fn seal(&self, key: &Key, envelope: Vec<u8>) -> Result<Option<Vec<u8>>> {
        match self.treatment(key.category()) {
            Treatment::Plain => Ok(Some(envelope)),
            Treatment::Encrypted(e) => e.seal(key.as_str(), &envelope).map(Some),
            Treatment::NotCached => Ok(None),
        }
    }

    /// The envelope in `stored`, read from Redis under `key`: decrypted if it was encrypted
    /// (whatever the category: a category no longer marked sensitive still reads its values),
    /// refused if `key`'s category is sensitive and it was not.
    pub(crate) fn open<'b>(&self, key: &Key, stored: &'b [u8]) -> Result<Cow<'b, [u8]>, Rejected> {
        if stored.first() == Some(&ENCRYPTED_VERSION) {
            return match &self.encryption {
                Some(e) => e.open(key.as_str(), stored).map(Cow::Owned),
                None => Err(Rejected::UnknownKey),
            };
        }
        match self.treatment(key.category()) {
            Treatment::Plain => Ok(Cow::Borrowed(stored)),
            _ => Err(Rejected::NotEncrypted),
        }
    }

    /// Logs a refused value, unless one was logged less than [`REJECTION_LOG_INTERVAL`] ago.
    pub(crate) fn log_rejection(&self, key: &Key, why: Rejected) {
        if let Some(suppressed) = self.rejections.check() {
            tracing::warn!(
                key = key.as_str(),
                reason = %why,
                others_since_last_line = suppressed,
                "cached value failed to authenticate: read as a miss and deleted"
            );
        }
    }

    /// Says at start-up what is encrypted, and what is not cached for want of keys.
    pub(crate) fn log_start(&self) {
        if self.in_process || self.sensitive.is_empty() {
            return;
        }
        let names: Vec<&str> = self.sensitive.iter().map(Category::name).collect();
        match &self.encryption {
            Some(e) => tracing::info!(
                categories = ?names,
                keys = e.key_count(),
                "sensitive categories are encrypted in redis (XChaCha20-Poly1305)"
            ),
            None => tracing::warn!(
                categories = ?names,
                "sensitive categories without encryption keys (CACHE_ENCRYPTION_KEYS): their values are never cached"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key, as hex and as base64 (the bytes 0..32).
    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn keys_are_read_as_hex_or_base64_and_mean_the_same() {
        let raw: Vec<u8> = (0..32).collect();
        let by_bytes = Encryption::new([&raw]).unwrap();
        let sealed = by_bytes.seal("k", b"v").unwrap();
        let no_pad = B64.trim_end_matches('=');
        let url_safe = "_-8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0"; // 0xff 0xef 0 1 ... 29
        for text in [HEX, &HEX.to_uppercase(), B64, no_pad, &format!("  {B64} ,")] {
            let e = Encryption::parse(text).unwrap();
            assert_eq!(e.key_count(), 1, "{text}");
            assert_eq!(e.open("k", &sealed).unwrap(), b"v", "{text}");
        }
        assert_eq!(Encryption::parse(url_safe).unwrap().key_count(), 1);
        let two = Encryption::parse(&format!("{url_safe},{HEX}")).unwrap();
        assert_eq!(two.key_count(), 2);
        assert_eq!(two.open("k", &sealed).unwrap(), b"v");
    }

    #[test]
    fn bad_key_lists_name_the_key_and_never_show_it() {
        let cases = [
            ("", KeyError::NoKeys),
            (" , ", KeyError::NoKeys),
            (
                &format!("{B64},not a key!"),
                KeyError::Encoding { position: 2 },
            ),
            (
                &HEX[..62],
                KeyError::Length {
                    position: 1,
                    len: 31,
                },
            ),
            (
                &format!("{HEX}00"),
                KeyError::Length {
                    position: 1,
                    len: 33,
                },
            ),
            (
                "c2hvcnQ=",
                KeyError::Length {
                    position: 1,
                    len: 5,
                },
            ),
            (
                &format!("{HEX},{B64}"),
                KeyError::Repeated {
                    position: 2,
                    first: 1,
                },
            ),
        ];
        for (list, expected) in cases {
            let err = Encryption::parse(list).unwrap_err();
            assert_eq!(err, expected, "{list:?}");
            let shown = format!("{err} {err:?}");
            for secret in [HEX, &HEX[..62], B64, "c2hvcnQ", "not a key"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert!(matches!(
            Encryption::new([[1u8; 16]]),
            Err(KeyError::Length {
                position: 1,
                len: 16
            })
        ));
    }

    #[test]
    fn debug_shows_how_many_keys_and_nothing_of_them() {
        let e = Encryption::parse(&format!("{HEX},{}", "ab".repeat(32))).unwrap();
        let shown = format!("{e:?} {e:#?}");
        assert_eq!(format!("{e:?}"), "Encryption { keys: 2, .. }");
        for secret in [HEX, B64, "0, 1, 2, 3", "171, 171", "abab"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn a_sensitive_category_refuses_plain_values_and_others_take_both() {
        let sessions = Category::from_static("sessions");
        let other = Category::from_static("other");
        let keys = crate::key::KeySpace::new("t", "ns").unwrap();
        let (s, o) = (keys.key(&sessions, ["a"]), keys.key(&other, ["a"]));
        let e = Encryption::new([[7u8; 32]]).unwrap();
        let p = Protection::new(Some(e.clone()), vec![sessions.clone()], false);
        let sealed = p.seal(&s, b"\x01\x01\x00x".to_vec()).unwrap().unwrap();
        assert_eq!(sealed[0], ENCRYPTED_VERSION);
        assert_eq!(&*p.open(&s, &sealed).unwrap(), b"\x01\x01\x00x");
        assert_eq!(p.open(&s, b"\x01\x01\x00x"), Err(Rejected::NotEncrypted));
        // Not sensitive: stored plain, and an encrypted value (one sealed for its name) reads.
        assert_eq!(p.seal(&o, b"plain".to_vec()).unwrap().unwrap(), b"plain");
        assert!(matches!(p.open(&o, b"plain"), Ok(Cow::Borrowed(_))));
        let for_o = e.seal(o.as_str(), b"v").unwrap();
        assert_eq!(&*p.open(&o, &for_o).unwrap(), b"v");
        // Sensitive without keys: not cached; an encrypted value is one it cannot open.
        let none = Protection::new(None, vec![sessions.clone()], false);
        assert!(none.not_cached(&s) && !none.not_cached(&o));
        assert_eq!(none.seal(&s, b"v".to_vec()).unwrap(), None);
        assert_eq!(none.open(&o, &for_o), Err(Rejected::UnknownKey));
        // In process (standalone): nothing is encrypted, everything cached.
        let local = Protection::new(None, vec![sessions], true);
        assert!(!local.not_cached(&s));
        assert_eq!(local.seal(&s, b"v".to_vec()).unwrap().unwrap(), b"v");
    }
}
