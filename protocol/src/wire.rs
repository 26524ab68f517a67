//! CBOR encoding and decoding. This is the only module that names the CBOR library
//! (`serde_cbor`, flagged unmaintained by RUSTSEC-2021-0127), so swapping it for another
//! implementation touches this file alone. The golden vectors in `tests/vectors/` pin the
//! exact bytes, so a swap that changes the encoding fails the tests.

use serde::{de::DeserializeOwned, Serialize};

/// A value could not be turned into CBOR or back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WireError(String);

impl WireError {
    /// An error with its own message.
    pub(crate) fn new(message: String) -> Self {
        WireError(message)
    }
}

/// Encodes `value` as CBOR (maps with field names, definite lengths, shortest integers).
pub(crate) fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    serde_cbor::to_vec(value).map_err(|e| WireError(e.to_string()))
}

/// Decodes exactly one CBOR value from `bytes`; trailing bytes are an error.
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    serde_cbor::from_slice(bytes).map_err(|e| WireError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_map_has_the_expected_bytes() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            a: u8,
        }
        let bytes = to_vec(&T { a: 1 }).unwrap();
        assert_eq!(bytes, [0xa1, 0x61, b'a', 0x01]);
        assert_eq!(from_slice::<T>(&bytes).unwrap(), T { a: 1 });
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        assert!(from_slice::<u8>(&[0x01, 0x02]).is_err());
    }
}

/// A byte string encoded as a CBOR byte string (major type 2), not as an array of integers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}
