//! The serialization envelope: how a value becomes the bytes stored in Redis, and back.
//!
//! Every stored value starts with a three-byte header, so formats can change without a flush:
//!
//! | byte | meaning |
//! |------|---------|
//! | 0    | envelope version: [`ENVELOPE_VERSION`] (1) for an untagged value, 2 for a tagged one, 3 for an encrypted one |
//! | 1    | codec id: 1 postcard, 2 MessagePack, 3 JSON |
//! | 2    | compression id: 0 none, 1 LZ4 (size-prepended block) |
//!
//! A tagged value (version 2) continues with the tags it carries and the version each tag had
//! when the value was loaded: a count byte (1 to [`MAX_TAGS`](crate::MAX_TAGS)), then per tag a
//! little-endian `u16` length and the encoded tag, a `u8` length and the version. The payload
//! follows. A reader compares those versions with the tags' current ones (see `coherence`).
//!
//! An encrypted value (version 3, a sensitive category's) carries a version 1 or 2 envelope,
//! encrypted with the Redis key name as associated data; its layout is in `encryption`, which
//! opens it before anything here reads it.
//!
//! Byte 0 is never 0 in a value: a stored string starting with 0 is a load lease (see
//! `coherence`), which readers treat as a miss and never delete.
//!
//! Decoding reads the codec from the header, not from the configuration, so switching a cache's
//! codec keeps existing entries readable. Anything that does not decode (an unknown version,
//! corruption, another type stored under the key) is an [`Error::Decode`], which the cache treats
//! as a miss and deletes.
//!
//! The default codec is postcard: it was the fastest and most compact in `benches/codec.rs` (the
//! figures are in the README). Postcard is not self-describing, so types that need
//! `deserialize_any` (`serde_json::Value`, `#[serde(untagged)]`, `#[serde(flatten)]`) must use
//! [`Codec::MessagePack`] or [`Codec::Json`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The envelope format version written in byte 0 of an untagged value.
pub const ENVELOPE_VERSION: u8 = 1;

/// Byte 0 of a tagged value.
const TAGGED_VERSION: u8 = 2;

/// Byte 0 of an encrypted value (see `encryption`).
pub(crate) const ENCRYPTED_VERSION: u8 = 3;

/// Byte 0 of a load lease, which is stored where a value would be but is not one.
pub(crate) const LEASE_BYTE: u8 = 0;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_LZ4: u8 = 1;

/// How values are serialized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// [postcard](https://docs.rs/postcard): compact and fast; not self-describing.
    #[default]
    Postcard,
    /// MessagePack through `rmp-serde` (struct fields as names): self-describing.
    MessagePack,
    /// JSON through `serde_json`: self-describing and readable with `redis-cli`.
    Json,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Self::Postcard => 1,
            Self::MessagePack => 2,
            Self::Json => 3,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Postcard),
            2 => Some(Self::MessagePack),
            3 => Some(Self::Json),
            _ => None,
        }
    }

    fn serialize_into<T: Serialize + ?Sized>(self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        let enc = |e: &dyn std::fmt::Display| Error::Encode(e.to_string());
        match self {
            Self::Postcard => {
                postcard::to_io(value, &mut *out).map_err(|e| enc(&e))?;
            }
            Self::MessagePack => {
                rmp_serde::encode::write_named(out, value).map_err(|e| enc(&e))?;
            }
            Self::Json => serde_json::to_writer(out, value).map_err(|e| enc(&e))?,
        }
        Ok(())
    }

    fn deserialize<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        let dec = |e: &dyn std::fmt::Display| Error::Decode(e.to_string());
        match self {
            Self::Postcard => postcard::from_bytes(bytes).map_err(|e| dec(&e)),
            Self::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| dec(&e)),
            Self::Json => serde_json::from_slice(bytes).map_err(|e| dec(&e)),
        }
    }
}

/// Encodes and decodes values with a codec and a compression threshold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Envelope {
    codec: Codec,
    /// Serialized payloads larger than this many bytes are LZ4-compressed.
    compress_threshold: usize,
}

impl Envelope {
    pub(crate) fn new(codec: Codec, compress_threshold: usize) -> Self {
        Self {
            codec,
            compress_threshold,
        }
    }

    /// An untagged value.
    #[cfg(test)]
    pub(crate) fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        self.encode_tagged(value, &[])
    }

    /// A value carrying `tags`, each with the version it had when the value was read from the
    /// source (untagged when `tags` is empty).
    pub(crate) fn encode_tagged<T: Serialize + ?Sized>(
        &self,
        value: &T,
        tags: &[(&str, &[u8])],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        let version = if tags.is_empty() {
            ENVELOPE_VERSION
        } else {
            TAGGED_VERSION
        };
        out.extend_from_slice(&[version, self.codec.id(), COMPRESSION_NONE]);
        if !tags.is_empty() {
            let count = u8::try_from(tags.len())
                .map_err(|_| Error::Encode(format!("{} tags on one value", tags.len())))?;
            out.push(count);
            for (tag, tag_version) in tags {
                let len = u16::try_from(tag.len())
                    .map_err(|_| Error::Encode(format!("tag of {} bytes", tag.len())))?;
                let vlen = u8::try_from(tag_version.len())
                    .map_err(|_| Error::Encode("tag version too long".into()))?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(tag.as_bytes());
                out.push(vlen);
                out.extend_from_slice(tag_version);
            }
        }
        let start = out.len();
        self.codec.serialize_into(value, &mut out)?;
        if out.len() - start > self.compress_threshold {
            let compressed = lz4_flex::compress_prepend_size(&out[start..]);
            // Keep the compressed form only when it saves space.
            if compressed.len() < out.len() - start {
                out.truncate(start);
                out[2] = COMPRESSION_LZ4;
                out.extend_from_slice(&compressed);
            }
        }
        Ok(out)
    }

    /// Decodes a value, ignoring any tags it carries.
    pub(crate) fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        Sealed::open(bytes)?.decode()
    }
}

/// A stored value with its header read: the tags it carries and the payload still encoded.
#[derive(Debug)]
pub(crate) struct Sealed<'a> {
    codec: Codec,
    compression: u8,
    /// Each tag (encoded, as in [`Tag::as_str`](crate::Tag::as_str)) with the version it had.
    pub(crate) tags: Vec<(&'a str, &'a [u8])>,
    payload: &'a [u8],
}

impl<'a> Sealed<'a> {
    /// Reads the header of `bytes`; the payload is decoded by [`decode`](Self::decode).
    pub(crate) fn open(bytes: &'a [u8]) -> Result<Self> {
        let [version, codec, compression, rest @ ..] = bytes else {
            return Err(Error::Decode(
                "value shorter than the envelope header".into(),
            ));
        };
        let codec = Codec::from_id(*codec)
            .ok_or_else(|| Error::Decode(format!("unknown codec id {codec}")))?;
        let (tags, payload) = match *version {
            ENVELOPE_VERSION => (Vec::new(), rest),
            TAGGED_VERSION => read_tags(rest)?,
            ENCRYPTED_VERSION => {
                return Err(Error::Decode("encrypted value: open it first".into()));
            }
            other => return Err(Error::Decode(format!("unknown envelope version {other}"))),
        };
        Ok(Self {
            codec,
            compression: *compression,
            tags,
            payload,
        })
    }

    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        let payload = self.payload;
        match self.compression {
            COMPRESSION_NONE => self.codec.deserialize(payload),
            COMPRESSION_LZ4 => {
                // The size prefix is untrusted: LZ4 cannot expand more than 255×, so a larger
                // claim is corruption, not a reason to allocate gigabytes.
                let claimed = payload
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or_else(|| Error::Decode("lz4: missing size".into()))?;
                if claimed > payload.len().saturating_mul(255) {
                    return Err(Error::Decode(format!("lz4: implausible size {claimed}")));
                }
                let raw = lz4_flex::decompress_size_prepended(payload)
                    .map_err(|e| Error::Decode(format!("lz4: {e}")))?;
                self.codec.deserialize(&raw)
            }
            other => Err(Error::Decode(format!("unknown compression id {other}"))),
        }
    }
}

/// The tag list of a version-2 envelope, and what follows it.
#[allow(clippy::type_complexity)]
fn read_tags(bytes: &[u8]) -> Result<(Vec<(&str, &[u8])>, &[u8])> {
    let short = || Error::Decode("tag list cut short".into());
    let (&count, mut rest) = bytes.split_first().ok_or_else(short)?;
    if count == 0 || usize::from(count) > crate::key::MAX_TAGS {
        return Err(Error::Decode(format!("{count} tags on one value")));
    }
    let mut tags = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (len, r) = rest.split_at_checked(2).ok_or_else(short)?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        let (tag, r) = r.split_at_checked(len).ok_or_else(short)?;
        let tag = std::str::from_utf8(tag).map_err(|_| Error::Decode("tag not UTF-8".into()))?;
        let (&vlen, r) = r.split_first().ok_or_else(short)?;
        let (version, r) = r.split_at_checked(usize::from(vlen)).ok_or_else(short)?;
        tags.push((tag, version));
        rest = r;
    }
    Ok((tags, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Row {
        id: u64,
        name: String,
        tags: Vec<String>,
        score: Option<f64>,
    }

    fn row() -> impl Strategy<Value = Row> {
        (
            any::<u64>(),
            ".{0,40}",
            prop::collection::vec(".{0,8}", 0..300),
            any::<Option<u32>>(),
        )
            .prop_map(|(id, name, tags, score)| Row {
                id,
                name,
                tags,
                score: score.map(f64::from),
            })
    }

    proptest! {
        #[test]
        fn round_trips_with_every_codec(r in row(), threshold in prop_oneof![Just(0usize), Just(1024), Just(usize::MAX)]) {
            for codec in [Codec::Postcard, Codec::MessagePack, Codec::Json] {
                let env = Envelope::new(codec, threshold);
                let bytes = env.encode(&r).unwrap();
                prop_assert_eq!(env.decode::<Row>(&bytes).unwrap(), r.clone());
                // Any envelope decodes whatever the reader's configured codec.
                prop_assert_eq!(Envelope::new(Codec::Json, 0).decode::<Row>(&bytes).unwrap(), r.clone());
            }
        }

        #[test]
        fn garbage_is_a_decode_error_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Err(e) = Envelope::new(Codec::Postcard, 0).decode::<Row>(&bytes) {
                prop_assert!(e.is_codec());
            }
        }
    }

    #[test]
    fn large_values_are_compressed_and_small_ones_not() {
        let env = Envelope::new(Codec::Postcard, 512);
        let big = vec!["same text again".to_string(); 200];
        let bytes = env.encode(&big).unwrap();
        assert_eq!(bytes[2], COMPRESSION_LZ4);
        assert!(bytes.len() < 1000);
        assert_eq!(env.decode::<Vec<String>>(&bytes).unwrap(), big);
        let small = env.encode(&"hi").unwrap();
        assert_eq!(small[2], COMPRESSION_NONE);
    }

    #[test]
    fn tagged_values_carry_their_tags_and_versions() {
        let env = Envelope::new(Codec::Postcard, 8);
        let big = vec!["same text again".to_string(); 20];
        let bytes = env
            .encode_tagged(&big, &[("image:{a}", &b"00ff"[..]), ("t:{}", &b""[..])])
            .unwrap();
        assert_eq!(bytes[0], 2);
        assert_eq!(bytes[2], COMPRESSION_LZ4);
        let sealed = Sealed::open(&bytes).unwrap();
        assert_eq!(
            sealed.tags,
            vec![("image:{a}", &b"00ff"[..]), ("t:{}", &b""[..])]
        );
        assert_eq!(sealed.decode::<Vec<String>>().unwrap(), big);
        let plain = env.encode(&1u8).unwrap();
        assert_eq!(plain[0], ENVELOPE_VERSION);
        assert!(Sealed::open(&plain).unwrap().tags.is_empty());
        // A cut tag list is a decode error, never a panic.
        for cut in 3..bytes.len().min(30) {
            let _ = Sealed::open(&bytes[..cut]).and_then(|s| s.decode::<Vec<String>>());
        }
        assert!(Sealed::open(&bytes[..6]).is_err());
    }

    #[test]
    fn unknown_versions_and_ids_are_decode_errors() {
        let env = Envelope::new(Codec::Postcard, 0);
        for bad in [
            &[2u8, 1, 0, 0][..],
            &[1, 9, 0, 0],
            &[1, 1, 7, 0],
            &[1, 1],
            &[LEASE_BYTE, 1, 0, 0],
            b"plain",
        ] {
            assert!(env.decode::<u8>(bad).unwrap_err().is_codec(), "{bad:?}");
        }
    }

    /// Encryption of envelopes (see `encryption`): what a sensitive category stores.
    mod encrypted {
        use super::*;
        use crate::encryption::{ENCRYPTION_OVERHEAD, Encryption, Rejected};

        const NAME: &str = "prod:app:sessions:{abc}";

        fn keys(seeds: &[u8]) -> Encryption {
            Encryption::new(seeds.iter().map(|s| [*s; 32])).unwrap()
        }

        fn sealed(e: &Encryption, env: &Envelope) -> (Row, Vec<u8>, Vec<u8>) {
            let row = Row {
                id: 7,
                name: "SECRET-MARKER".repeat(10),
                tags: vec!["t".into(); 3],
                score: Some(1.5),
            };
            let plain = env
                .encode_tagged(&row, &[("user:{1}", &b"v1"[..])])
                .unwrap();
            let stored = e.seal(NAME, &plain).unwrap();
            (row, plain, stored)
        }

        proptest! {
            #[test]
            fn round_trips_under_its_own_name(r in row(), threshold in prop_oneof![Just(0usize), Just(usize::MAX)]) {
                let e = keys(&[1, 2]);
                let env = Envelope::new(Codec::Postcard, threshold);
                let plain = env.encode(&r).unwrap();
                let stored = e.seal(NAME, &plain).unwrap();
                prop_assert_eq!(stored[0], ENCRYPTED_VERSION);
                prop_assert_eq!(stored.len(), plain.len() + ENCRYPTION_OVERHEAD);
                let opened = e.open(NAME, &stored).unwrap();
                prop_assert_eq!(&opened, &plain);
                prop_assert_eq!(env.decode::<Row>(&opened).unwrap(), r);
            }

            #[test]
            fn garbage_is_refused_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
                let mut bytes = bytes;
                if let Some(b) = bytes.first_mut() {
                    *b = ENCRYPTED_VERSION;
                }
                prop_assert!(keys(&[1]).open(NAME, &bytes).is_err());
            }
        }

        #[test]
        fn the_plaintext_is_not_in_the_stored_bytes_and_nonces_differ() {
            let e = keys(&[1]);
            let (_, plain, stored) = sealed(&e, &Envelope::new(Codec::Json, usize::MAX));
            let marker = b"SECRET-MARKER";
            assert!(plain.windows(marker.len()).any(|w| w == marker));
            assert!(!stored.windows(marker.len()).any(|w| w == marker));
            // The tag names travel inside, too.
            assert!(!stored.windows(8).any(|w| w == b"user:{1}"));
            let again = e.seal(NAME, &plain).unwrap();
            assert_ne!(again[2..26], stored[2..26], "a fresh nonce per value");
            assert_ne!(again, stored);
        }

        #[test]
        fn any_altered_byte_or_another_name_fails_to_authenticate() {
            let e = keys(&[1]);
            let (row, _, stored) = sealed(&e, &Envelope::new(Codec::Postcard, 0));
            assert_eq!(
                Envelope::new(Codec::Postcard, 0)
                    .decode::<Row>(&e.open(NAME, &stored).unwrap())
                    .unwrap(),
                row
            );
            for i in 0..stored.len() {
                let mut t = stored.clone();
                t[i] ^= 0x01;
                let expected = match i {
                    0 => Rejected::NotEncrypted,
                    1 => Rejected::UnknownKey,
                    _ => Rejected::Unauthentic,
                };
                assert_eq!(e.open(NAME, &t), Err(expected), "byte {i}");
            }
            for cut in 0..stored.len() {
                assert!(e.open(NAME, &stored[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = stored.clone();
            longer.push(0);
            assert_eq!(e.open(NAME, &longer), Err(Rejected::Unauthentic));
            // Copied under another key name: the associated data differs.
            for other in ["prod:app:sessions:{abd}", "staging:app:sessions:{abc}", ""] {
                assert_eq!(
                    e.open(other, &stored),
                    Err(Rejected::Unauthentic),
                    "{other}"
                );
            }
            // A plain envelope is not an encrypted one.
            let plain = Envelope::new(Codec::Postcard, 0).encode(&row).unwrap();
            assert_eq!(e.open(NAME, &plain), Err(Rejected::NotEncrypted));
            // Nor does the envelope decoder take an encrypted value for a plain one.
            assert!(Sealed::open(&stored).is_err());
        }

        #[test]
        fn rotation_reads_old_values_and_writes_with_the_first_key() {
            let old = keys(&[1]);
            let rotated = keys(&[2, 1]);
            let new_only = keys(&[2]);
            let env = Envelope::new(Codec::Postcard, 0);
            let (row, plain, by_old) = sealed(&old, &env);
            assert_eq!(rotated.open(NAME, &by_old).unwrap(), plain);
            assert_eq!(new_only.open(NAME, &by_old), Err(Rejected::UnknownKey));
            let by_rotated = rotated.seal(NAME, &plain).unwrap();
            assert_eq!(
                env.decode::<Row>(&new_only.open(NAME, &by_rotated).unwrap())
                    .unwrap(),
                row
            );
            assert_eq!(old.open(NAME, &by_rotated), Err(Rejected::UnknownKey));
        }

        #[test]
        fn keys_that_share_an_id_are_each_tried() {
            // Two keys whose id bytes collide (about 1 in 256 pairs): found by search.
            let ids: Vec<u8> = (0..=255u8)
                .map(|seed| keys(&[seed]).seal(NAME, b"x").unwrap()[1])
                .collect();
            let (a, b) = (0..=255u8)
                .flat_map(|a| (0..a).map(move |b| (a, b)))
                .find(|(a, b)| ids[usize::from(*a)] == ids[usize::from(*b)])
                .unwrap();
            let both = keys(&[a, b]);
            let by_b = keys(&[b]).seal(NAME, b"payload").unwrap();
            assert_eq!(both.open(NAME, &by_b).unwrap(), b"payload");
            // Key `a` alone has the id but is the wrong key: tried, and refused as unauthentic.
            assert_eq!(keys(&[a]).open(NAME, &by_b), Err(Rejected::Unauthentic));
        }
    }
}
