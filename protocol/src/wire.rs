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

/// Decodes `bytes` like [`from_slice`], but in two steps: CBOR into a generic tree, then the
/// tree into `T`. serde_cbor's decoder is instantiated once per type it decodes into, at
/// about 8 KB each on MIPS; this way it is instantiated once, for the tree, and each type
/// costs only the much smaller tree walk. For the policy an agent receives (some twenty
/// types) that is about 200 KB of a router binary, for a few microseconds per policy.
/// Tags are looked through; byte strings, non-text map keys, integers beyond 64 bits and
/// non-finite floats are errors (no policy field holds one).
pub(crate) fn from_slice_via_tree<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let tree: serde_cbor::Value = from_slice(bytes)?;
    serde_json::from_value(to_tree(tree)?).map_err(|e| WireError(e.to_string()))
}

fn to_tree(value: serde_cbor::Value) -> Result<serde_json::Value, WireError> {
    use serde_cbor::Value as C;
    use serde_json::Value as J;
    Ok(match value {
        C::Null => J::Null,
        C::Bool(b) => J::Bool(b),
        C::Integer(i) => match (u64::try_from(i), i64::try_from(i)) {
            (Ok(u), _) => J::from(u),
            (_, Ok(n)) => J::from(n),
            _ => return Err(WireError(format!("integer {i} out of range"))),
        },
        C::Float(f) => serde_json::Number::from_f64(f)
            .map(J::Number)
            .ok_or_else(|| WireError(format!("non-finite number {f}")))?,
        C::Text(s) => J::String(s),
        C::Array(items) => J::Array(items.into_iter().map(to_tree).collect::<Result<_, _>>()?),
        C::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let C::Text(k) = k else {
                    return Err(WireError("a map key that is not text".into()));
                };
                map.insert(k, to_tree(v)?);
            }
            J::Object(map)
        }
        C::Tag(_, inner) => to_tree(*inner)?,
        C::Bytes(_) => return Err(WireError("an unexpected byte string".into())),
        _ => return Err(WireError("an unsupported CBOR value".into())),
    })
}

/// The fields of a CBOR map with text keys, taken out one by one by name: how the envelope
/// framing is read. Keys nobody asks for are ignored, like unknown fields in a derived
/// decoder; a missing or mistyped field is an error naming it.
pub(crate) struct Fields(std::collections::BTreeMap<serde_cbor::Value, serde_cbor::Value>);

impl Fields {
    /// Decodes exactly one CBOR map from `bytes`.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Fields, WireError> {
        match from_slice(bytes)? {
            serde_cbor::Value::Map(m) => Ok(Fields(m)),
            _ => Err(WireError("expected a map".into())),
        }
    }

    fn take(&mut self, name: &str) -> Result<serde_cbor::Value, WireError> {
        self.0
            .remove(&serde_cbor::Value::Text(name.into()))
            .ok_or_else(|| WireError(format!("missing field `{name}`")))
    }

    fn mistyped(name: &str, wanted: &str) -> WireError {
        WireError(format!("field `{name}`: expected {wanted}"))
    }

    /// A byte string.
    pub(crate) fn bytes(&mut self, name: &str) -> Result<Vec<u8>, WireError> {
        match self.take(name)? {
            serde_cbor::Value::Bytes(b) => Ok(b),
            _ => Err(Self::mistyped(name, "a byte string")),
        }
    }

    /// A text string.
    pub(crate) fn text(&mut self, name: &str) -> Result<String, WireError> {
        match self.take(name)? {
            serde_cbor::Value::Text(t) => Ok(t),
            _ => Err(Self::mistyped(name, "a text string")),
        }
    }

    /// A map with text keys, as [`Fields`] of its own.
    pub(crate) fn map(&mut self, name: &str) -> Result<Fields, WireError> {
        match self.take(name)? {
            serde_cbor::Value::Map(m) => Ok(Fields(m)),
            _ => Err(Self::mistyped(name, "a map")),
        }
    }

    /// An unsigned integer of at most 32 bits.
    pub(crate) fn uint32(&mut self, name: &str) -> Result<u32, WireError> {
        let v = self.uint(name)?;
        u32::try_from(v).map_err(|_| Self::mistyped(name, "an unsigned 32-bit integer"))
    }

    /// An unsigned integer of at most 64 bits.
    pub(crate) fn uint(&mut self, name: &str) -> Result<u64, WireError> {
        match self.take(name)? {
            serde_cbor::Value::Integer(i) => {
                u64::try_from(i).map_err(|_| Self::mistyped(name, "an unsigned 64-bit integer"))
            }
            _ => Err(Self::mistyped(name, "an unsigned integer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_decoder_agrees_with_the_direct_one() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        #[serde(deny_unknown_fields)]
        struct T {
            a: u16,
            b: f32,
            c: Vec<String>,
            d: Option<i64>,
            e: bool,
        }
        let t = T {
            a: 65535,
            b: 0.35,
            c: vec!["x".into(), "y".into()],
            d: Some(-5),
            e: true,
        };
        let bytes = to_vec(&t).unwrap();
        assert_eq!(from_slice_via_tree::<T>(&bytes).unwrap(), t);
        // Type errors, unknown fields and non-text keys are refused, as directly.
        #[derive(serde::Serialize)]
        struct Wide {
            a: u32,
        }
        assert!(from_slice::<T>(&to_vec(&Wide { a: 70000 }).unwrap()).is_err());
        assert!(from_slice_via_tree::<T>(&to_vec(&Wide { a: 70000 }).unwrap()).is_err());
        let mut extra = serde_cbor::value::to_value(&t).unwrap();
        if let serde_cbor::Value::Map(m) = &mut extra {
            m.insert(
                serde_cbor::Value::Text("zz".into()),
                serde_cbor::Value::Null,
            );
        }
        let extra = to_vec(&extra).unwrap();
        assert!(from_slice::<T>(&extra).is_err());
        assert!(from_slice_via_tree::<T>(&extra).is_err());
        assert!(from_slice_via_tree::<T>(&[0xa1, 0x01, 0x02]).is_err());
        assert!(from_slice_via_tree::<T>(&[0xff]).is_err());
    }

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
