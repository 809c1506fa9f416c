//! PostgreSQL through sqlx's PostgreSQL driver: arguments bound with their kinds, rows read into
//! the kit's [`Row`] so service code reads both engines the same way.

use super::value::{Arg, Row, Value};
use super::{Error, Outcome};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Column, Postgres, Row as _, TypeInfo, ValueRef};
use std::sync::Arc;

#[expect(
    clippy::disallowed_methods,
    reason = "the PostgreSQL side of mercato_kit::db::query itself"
)]
fn bind(sql: &str, args: Vec<Arg>) -> sqlx::query::Query<'_, Postgres, PgArguments> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(v),
            Arg::Real(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Blob(v) => q.bind(v),
        };
    }
    q
}

fn value(row: &PgRow, i: usize) -> Result<Value, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let name = raw.type_info().name().to_owned();
    Ok(match name.as_str() {
        "INT8" => Value::Int(row.try_get::<i64, _>(i)?),
        "INT4" => Value::Int(row.try_get::<i32, _>(i)?.into()),
        "INT2" => Value::Int(row.try_get::<i16, _>(i)?.into()),
        "BOOL" => Value::Int(row.try_get::<bool, _>(i)?.into()),
        "FLOAT8" => Value::Real(row.try_get::<f64, _>(i)?),
        "FLOAT4" => Value::Real(row.try_get::<f32, _>(i)?.into()),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => {
            Value::Text(row.try_get::<String, _>(i)?)
        }
        "BYTEA" => Value::Blob(row.try_get::<Vec<u8>, _>(i)?),
        // `SELECT pg_advisory_xact_lock(..)` and friends.
        "VOID" => Value::Null,
        _ => Value::Unsupported(name),
    })
}

fn rows(found: Vec<PgRow>) -> Result<Vec<Row>, Error> {
    let Some(first) = found.first() else {
        return Ok(Vec::new());
    };
    let columns: Arc<[Box<str>]> = first
        .columns()
        .iter()
        .map(|c| Box::from(c.name()))
        .collect();
    found
        .iter()
        .map(|r| {
            let values = (0..columns.len())
                .map(|i| value(r, i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Row::new(columns.clone(), values))
        })
        .collect()
}

pub(crate) async fn run<'e, E>(
    ex: E,
    sql: &str,
    args: Vec<Arg>,
    want: bool,
) -> Result<Outcome, Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let q = bind(sql, args);
    if want {
        let found = q.fetch_all(ex).await?;
        Ok(Outcome {
            rows_affected: found.len() as u64,
            rows: rows(found)?,
        })
    } else {
        let done = q.execute(ex).await?;
        Ok(Outcome {
            rows: Vec::new(),
            rows_affected: done.rows_affected(),
        })
    }
}
