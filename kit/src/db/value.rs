//! What crosses between Rust and SQL: bound arguments ([`Encode`] → [`Arg`]) and column values
//! read back ([`Value`] → [`Decode`]), the same on both engines.
//!
//! The shared dialect stores everything as BIGINT, DOUBLE, TEXT or BLOB (booleans as 0/1, times
//! as µs, ids and JSON as text), so four kinds are all there is. An argument keeps its kind even
//! when it is NULL, because PostgreSQL types every parameter of a prepared statement.

use super::Error;
use std::sync::Arc;

/// One bound argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

/// The kind of an argument, for typing a NULL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
    Blob,
}

impl Arg {
    fn null(kind: Kind) -> Arg {
        match kind {
            Kind::Int => Arg::Int(None),
            Kind::Real => Arg::Real(None),
            Kind::Text => Arg::Text(None),
            Kind::Blob => Arg::Blob(None),
        }
    }
}

/// A Rust value that can be bound to a placeholder.
pub trait Encode {
    const KIND: Kind;
    fn encode(self) -> Arg;
}

macro_rules! encode_int {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            const KIND: Kind = Kind::Int;
            fn encode(self) -> Arg {
                Arg::Int(Some(self as i64))
            }
        }
    )*};
}
encode_int!(i64, i32, i16, u8, u16, u32);

macro_rules! encode_ref {
    ($($t:ty),*) => {$(
        impl Encode for &$t {
            const KIND: Kind = <$t as Encode>::KIND;
            fn encode(self) -> Arg {
                (*self).encode()
            }
        }
    )*};
}
encode_ref!(i64, i32, i16, u8, u16, u32, bool, f64);

impl Encode for bool {
    const KIND: Kind = Kind::Int;
    fn encode(self) -> Arg {
        Arg::Int(Some(i64::from(self)))
    }
}

impl Encode for f64 {
    const KIND: Kind = Kind::Real;
    fn encode(self) -> Arg {
        Arg::Real(Some(self))
    }
}

impl Encode for String {
    const KIND: Kind = Kind::Text;
    fn encode(self) -> Arg {
        Arg::Text(Some(self))
    }
}

impl Encode for &str {
    const KIND: Kind = Kind::Text;
    fn encode(self) -> Arg {
        Arg::Text(Some(self.to_owned()))
    }
}

impl Encode for &String {
    const KIND: Kind = Kind::Text;
    fn encode(self) -> Arg {
        Arg::Text(Some(self.clone()))
    }
}

impl Encode for Vec<u8> {
    const KIND: Kind = Kind::Blob;
    fn encode(self) -> Arg {
        Arg::Blob(Some(self))
    }
}

impl Encode for &[u8] {
    const KIND: Kind = Kind::Blob;
    fn encode(self) -> Arg {
        Arg::Blob(Some(self.to_vec()))
    }
}

impl<T: Encode> Encode for Option<T> {
    const KIND: Kind = T::KIND;
    fn encode(self) -> Arg {
        match self {
            Some(v) => v.encode(),
            None => Arg::null(T::KIND),
        }
    }
}

impl<T: Encode + Clone> Encode for &Option<T> {
    const KIND: Kind = T::KIND;
    fn encode(self) -> Arg {
        self.clone().encode()
    }
}

/// One column value as read.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    /// A PostgreSQL type outside the shared dialect (its name), kept so reading it can say so.
    Unsupported(String),
}

/// A Rust type a column can be read as.
pub trait Decode: Sized {
    fn decode(v: &Value) -> Result<Self, String>;
}

fn mismatch(want: &str, v: &Value) -> String {
    match v {
        Value::Null => format!("expected {want}, found NULL"),
        Value::Unsupported(t) => format!("expected {want}, found the unsupported type {t}"),
        other => format!("expected {want}, found {other:?}"),
    }
}

impl Decode for i64 {
    fn decode(v: &Value) -> Result<Self, String> {
        match v {
            Value::Int(i) => Ok(*i),
            other => Err(mismatch("an integer", other)),
        }
    }
}

impl Decode for i32 {
    fn decode(v: &Value) -> Result<Self, String> {
        let i = i64::decode(v)?;
        i32::try_from(i).map_err(|_| format!("{i} does not fit a 32-bit integer"))
    }
}

impl Decode for u32 {
    fn decode(v: &Value) -> Result<Self, String> {
        let i = i64::decode(v)?;
        u32::try_from(i).map_err(|_| format!("{i} does not fit an unsigned 32-bit integer"))
    }
}

impl Decode for bool {
    fn decode(v: &Value) -> Result<Self, String> {
        Ok(i64::decode(v)? != 0)
    }
}

impl Decode for f64 {
    fn decode(v: &Value) -> Result<Self, String> {
        match v {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(mismatch("a number", other)),
        }
    }
}

impl Decode for String {
    fn decode(v: &Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(mismatch("text", other)),
        }
    }
}

impl Decode for Vec<u8> {
    fn decode(v: &Value) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(mismatch("bytes", other)),
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(v: &Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            other => T::decode(other).map(Some),
        }
    }
}

/// How a column is named when read: by name or by position.
pub trait ColumnIndex {
    fn position(&self, row: &Row) -> Result<usize, Error>;
    fn describe(&self) -> String;
}

impl ColumnIndex for &str {
    fn position(&self, row: &Row) -> Result<usize, Error> {
        row.columns
            .iter()
            .position(|c| c.as_ref() == *self)
            .ok_or_else(|| Error::ColumnNotFound(self.to_string()))
    }
    fn describe(&self) -> String {
        self.to_string()
    }
}

impl ColumnIndex for usize {
    fn position(&self, row: &Row) -> Result<usize, Error> {
        (*self < row.values.len())
            .then_some(*self)
            .ok_or_else(|| Error::ColumnNotFound(format!("#{self}")))
    }
    fn describe(&self) -> String {
        format!("#{self}")
    }
}

/// One row of a result, the same type on both engines.
#[derive(Clone, Debug)]
pub struct Row {
    pub(crate) columns: Arc<[Box<str>]>,
    pub(crate) values: Vec<Value>,
}

impl Row {
    pub fn new(columns: Arc<[Box<str>]>, values: Vec<Value>) -> Row {
        Row { columns, values }
    }

    /// Reads a column as `T`; a missing column or a value of another kind is an error naming it.
    pub fn try_get<T: Decode, I: ColumnIndex>(&self, index: I) -> Result<T, Error> {
        let at = index.position(self)?;
        T::decode(&self.values[at]).map_err(|message| Error::ColumnDecode {
            index: index.describe(),
            source: message.into(),
        })
    }

    /// Like [`try_get`](Self::try_get), for tests and for columns a query itself guarantees.
    ///
    /// # Panics
    /// When the column is missing or of another kind.
    pub fn get<T: Decode, I: ColumnIndex>(&self, index: I) -> T {
        match self.try_get(index) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.as_ref())
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row::new(
            vec!["a".into(), "b".into(), "c".into()].into(),
            vec![Value::Int(7), Value::Null, Value::Text("x".into())],
        )
    }

    #[test]
    fn columns_read_by_name_and_position_with_their_kind() {
        let r = row();
        assert_eq!(r.get::<i64, _>("a"), 7);
        assert!(r.get::<bool, _>("a"));
        assert_eq!(r.get::<Option<i64>, _>("b"), None);
        assert_eq!(r.get::<String, _>(2), "x");
        let e = r.try_get::<i64, _>("b").unwrap_err().to_string();
        assert!(e.contains('b') && e.contains("NULL"), "{e}");
        assert!(matches!(
            r.try_get::<i64, _>("nope"),
            Err(Error::ColumnNotFound(_))
        ));
        assert!(r.try_get::<i64, _>("c").is_err());
    }

    #[test]
    fn a_null_argument_keeps_its_kind() {
        assert_eq!(None::<i64>.encode(), Arg::Int(None));
        assert_eq!(None::<&str>.encode(), Arg::Text(None));
        assert_eq!(Some("a").encode(), Arg::Text(Some("a".into())));
        assert_eq!(true.encode(), Arg::Int(Some(1)));
        assert_eq!(3u16.encode(), Arg::Int(Some(3)));
    }
}
