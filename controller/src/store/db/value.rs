//! Our own small parameter and value types, the same on both backends: integers, floats,
//! text, bytes and NULL. `u64` is stored as `BIGINT`/`INTEGER` (i64) with a checked
//! conversion both ways: a value that does not fit is an error, never a silent wrap.

use super::DbError;

/// One bound parameter. Build it with `From` (`Param::from(&cpe_id)`, `seq.into()`) or the
/// [`db_params!`](crate::db_params) macro.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Param<'a> {
    /// SQL NULL.
    Null,
    /// A signed integer.
    Int(i64),
    /// An unsigned integer, checked to fit in an i64 when bound.
    U64(u64),
    /// A float.
    Real(f64),
    /// Text.
    Text(&'a str),
    /// Bytes (`BLOB`, `BYTEA`).
    Bytes(&'a [u8]),
}

impl Param<'_> {
    /// The parameter as it is bound: [`Param::U64`] turned into [`Param::Int`].
    ///
    /// # Errors
    /// [`DbError::OutOfRange`] for a `u64` above `i64::MAX`.
    pub(super) fn bindable(self) -> Result<Self, DbError> {
        match self {
            Param::U64(v) => i64::try_from(v)
                .map(Param::Int)
                .map_err(|_| DbError::OutOfRange(v.to_string())),
            other => Ok(other),
        }
    }
}

macro_rules! int_params {
    ($($t:ty),*) => {$(
        impl From<$t> for Param<'_> {
            fn from(v: $t) -> Self {
                Param::Int(i64::from(v))
            }
        }
    )*};
}
int_params!(i64, i32, u32, i16, u16, u8);

impl From<u64> for Param<'_> {
    fn from(v: u64) -> Self {
        Param::U64(v)
    }
}

impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Param::Int(i64::from(v))
    }
}

impl From<f64> for Param<'_> {
    fn from(v: f64) -> Self {
        Param::Real(v)
    }
}

impl From<f32> for Param<'_> {
    fn from(v: f32) -> Self {
        Param::Real(f64::from(v))
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Param::Bytes(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Param<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Param::Bytes(v)
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// A slice of [`Param`]s from a list of values: `db_params![cpe_id, seq, &wire]`.
#[macro_export]
macro_rules! db_params {
    () => {
        &[] as &[$crate::store::db::Param<'_>]
    };
    ($($x:expr),+ $(,)?) => {
        &[$($crate::store::db::Param::from($x)),+] as &[$crate::store::db::Param<'_>]
    };
}

/// One value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer (any integer column; booleans read as 0 and 1).
    Int(i64),
    /// A float.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "integer",
            Value::Real(_) => "float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
        }
    }
}

/// A type a column can be read as.
pub trait FromValue: Sized {
    /// What the type is called in errors.
    const NAME: &'static str;

    /// Converts, or `None` when the value does not fit the type.
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const NAME: &'static str = "i64";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    const NAME: &'static str = "u64";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
}

impl FromValue for u32 {
    const NAME: &'static str = "u32";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => u32::try_from(*v).ok(),
            _ => None,
        }
    }
}

impl FromValue for bool {
    const NAME: &'static str = "bool";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => Some(*v != 0),
            _ => None,
        }
    }
}

impl FromValue for f64 {
    const NAME: &'static str = "f64";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Real(v) => Some(*v),
            // An aggregate or a column without a declared type in SQLite can hand back an
            // integer where a float is meant.
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
}

impl FromValue for String {
    const NAME: &'static str = "text";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    const NAME: &'static str = "bytes";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Bytes(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    const NAME: &'static str = T::NAME;
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub(super) Vec<Value>);

impl Row {
    /// Column `index` (from 0) as `T`.
    ///
    /// # Errors
    /// [`DbError::Column`] when there is no such column or its value does not fit `T`
    /// (NULL into a non-`Option`, a negative number into `u64`, text into a number).
    pub fn get<T: FromValue>(&self, index: usize) -> Result<T, DbError> {
        let value = self.0.get(index).ok_or_else(|| DbError::Column {
            index,
            detail: format!("the row has {} columns", self.0.len()),
        })?;
        T::from_value(value).ok_or_else(|| DbError::Column {
            index,
            detail: format!("{} {value:?} does not fit {}", value.kind(), T::NAME),
        })
    }

    /// The values of the row, in column order.
    pub fn values(&self) -> &[Value] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_is_checked_both_ways() {
        assert_eq!(Param::from(7u64).bindable().unwrap(), Param::Int(7));
        let err = Param::from(u64::MAX).bindable().unwrap_err();
        assert!(matches!(err, DbError::OutOfRange(_)), "{err}");
        let row = Row(vec![Value::Int(-1), Value::Null, Value::Int(3)]);
        assert!(row.get::<u64>(0).is_err());
        assert_eq!(row.get::<i64>(0).unwrap(), -1);
        assert_eq!(row.get::<Option<u64>>(1).unwrap(), None);
        assert!(row.get::<u64>(1).is_err(), "NULL is not a number");
        assert_eq!(row.get::<Option<u64>>(2).unwrap(), Some(3));
        assert!(row.get::<i64>(3).is_err(), "no fourth column");
    }

    #[test]
    fn options_and_references_become_params() {
        let name = String::from("cpe-1");
        let none: Option<&str> = None;
        let p = crate::db_params![&name, none, Some(2u64), 1.5, &[1u8, 2][..]];
        assert_eq!(
            p,
            &[
                Param::Text("cpe-1"),
                Param::Null,
                Param::U64(2),
                Param::Real(1.5),
                Param::Bytes(&[1, 2]),
            ]
        );
    }
}
