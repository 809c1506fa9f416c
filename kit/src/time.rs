//! Time as stored and as shown. Stored as microseconds since the Unix epoch in a BIGINT, which
//! compares and sorts the same way on SQLite and PostgreSQL; shown as RFC 3339 UTC.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

pub fn now_us() -> Micros {
    Utc::now().timestamp_micros()
}

pub fn to_rfc3339(us: Micros) -> String {
    Utc.timestamp_micros(us)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn to_datetime(us: Micros) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_with_millis() {
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(to_rfc3339(1_500_000), "1970-01-01T00:00:01.500Z");
    }
}
