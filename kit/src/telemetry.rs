//! Logging: JSON lines (what a log pipeline wants) unless a person is watching: the default is
//! `pretty` when stderr is a terminal and `json` otherwise; `MERCATO_LOG_FORMAT` decides
//! explicitly. `MERCATO_LOG` takes a tracing filter such as `info,sqlx=warn`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter =
        std::env::var("MERCATO_LOG").unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty =
        std::env::var("MERCATO_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) finds a subscriber already set; that is fine.
    let _ = if pretty {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    };
}
