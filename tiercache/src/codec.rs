//! The serialization envelope: how a value becomes the bytes stored in Redis, and back.
//!
//! Every stored value starts with a three-byte header, so formats can change without a flush:
//!
//! | byte | meaning |
//! |------|---------|
//! | 0    | envelope version, [`ENVELOPE_VERSION`] |
//! | 1    | codec id: 1 postcard, 2 MessagePack, 3 JSON |
//! | 2    | compression id: 0 none, 1 LZ4 (size-prepended block) |
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

/// The envelope format version written in byte 0.
pub const ENVELOPE_VERSION: u8 = 1;

const HEADER_LEN: usize = 3;
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

    pub(crate) fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&[ENVELOPE_VERSION, self.codec.id(), COMPRESSION_NONE]);
        self.codec.serialize_into(value, &mut out)?;
        if out.len() - HEADER_LEN > self.compress_threshold {
            let compressed = lz4_flex::compress_prepend_size(&out[HEADER_LEN..]);
            // Keep the compressed form only when it saves space.
            if compressed.len() < out.len() - HEADER_LEN {
                out.truncate(HEADER_LEN);
                out[2] = COMPRESSION_LZ4;
                out.extend_from_slice(&compressed);
            }
        }
        Ok(out)
    }

    pub(crate) fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let [version, codec, compression, payload @ ..] = bytes else {
            return Err(Error::Decode(
                "value shorter than the envelope header".into(),
            ));
        };
        if *version != ENVELOPE_VERSION {
            return Err(Error::Decode(format!("unknown envelope version {version}")));
        }
        let codec = Codec::from_id(*codec)
            .ok_or_else(|| Error::Decode(format!("unknown codec id {codec}")))?;
        match *compression {
            COMPRESSION_NONE => codec.deserialize(payload),
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
                codec.deserialize(&raw)
            }
            other => Err(Error::Decode(format!("unknown compression id {other}"))),
        }
    }
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
    fn unknown_versions_and_ids_are_decode_errors() {
        let env = Envelope::new(Codec::Postcard, 0);
        for bad in [
            &[2u8, 1, 0, 0][..],
            &[1, 9, 0, 0],
            &[1, 1, 7, 0],
            &[1, 1],
            b"plain",
        ] {
            assert!(env.decode::<u8>(bad).unwrap_err().is_codec(), "{bad:?}");
        }
    }
}
