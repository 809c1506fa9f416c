//! Telemetry: log lines and traces, set up once per process.
//!
//! **Logs.** JSON lines (what a log pipeline wants) unless a person is watching: `pretty` when
//! standard error is a terminal, `json` otherwise; `MERCATO_LOG_FORMAT` (`json`, `pretty`)
//! decides explicitly and `MERCATO_LOG` takes a tracing filter such as `info,sqlx=warn`. A JSON
//! line written inside a span carries the fields of every span it is in (request id,
//! correlation id, service...) and the span's `trace_id` and `span_id`, so a log search and a
//! trace lead to each other.
//!
//! **Traces.** Every `tracing` span is an OpenTelemetry span (`tracing-opentelemetry`). The
//! spans that matter are made by the helpers below: one per HTTP request served and made, per
//! background job (the spans of an event published and handled are made in [`crate::events`],
//! which knows the envelope, from [`continue_trace`]). They take their parent from W3C
//! `traceparent` (a request header, an envelope, a stored job), so one checkout is one trace
//! across services and across the bus. With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are
//! batched and exported over OTLP HTTP/protobuf (sampled by `OTEL_TRACES_SAMPLER`/`_ARG`,
//! default parent-based always-on). Without it there is no exporter and no processor, and
//! spans that do not continue a sampled caller's trace are not sampled: ids are minted and
//! propagated, nothing is recorded.
//!
//! **Services.** `mercato up` runs several services in one process and one tracer; each span
//! carries its `service` (set where the span is made, inherited by its children) and the
//! exporter sends each service's spans under a resource of its own `service.name`. A process
//! that runs one service (`serve`) names it `OTEL_SERVICE_NAME` when that is set.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::{Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::{format::Writer, FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, SpanRef};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How the process reports: read from the environment by [`Settings::from_env`].
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The OTLP traces URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`); `None`: nothing is exported.
    pub traces_endpoint: Option<String>,
    /// The one service this process runs, if it runs one (`serve`).
    pub single_service: Option<String>,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    pub log_filter: Option<String>,
    /// `Some(true)` pretty, `Some(false)` JSON, `None`: pretty on a terminal.
    pub pretty: Option<bool>,
}

impl Settings {
    pub fn from_env(single_service: Option<&str>) -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let traces_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        });
        Settings {
            traces_endpoint,
            single_service: single_service.map(str::to_owned),
            service_name: var("OTEL_SERVICE_NAME"),
            log_filter: var("MERCATO_LOG"),
            pretty: var("MERCATO_LOG_FORMAT").map(|v| v.eq_ignore_ascii_case("pretty")),
        }
    }
}

/// Keeps the tracer provider of the process; [`Telemetry::shutdown`] exports what is queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans leave the process.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports every finished span now (tests, and before exit).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    pub fn shutdown(self) {
        let _ = self.provider.shutdown();
    }
}

/// Sets up logging and tracing from the environment. A second call (tests) finds a subscriber
/// already set and changes nothing.
pub fn init() -> Telemetry {
    init_with(Settings::from_env(None))
}

pub fn init_with(settings: Settings) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporting = settings.traces_endpoint.is_some();
    let mut builder = SdkTracerProvider::builder();
    if let Some(endpoint) = &settings.traces_endpoint {
        let default_name = match (&settings.single_service, &settings.service_name) {
            (_, Some(name)) => name.clone(),
            (Some(service), None) => service.clone(),
            (None, None) => "mercato".to_owned(),
        };
        // The sampler comes from OTEL_TRACES_SAMPLER/_ARG (the SDK's own default config).
        builder = builder.with_batch_exporter(PerService::new(
            endpoint.clone(),
            default_name,
            settings.single_service.clone(),
        ));
    } else {
        // Nothing leaves the process: record nothing we start ourselves. A caller's sampled
        // trace is still continued (and its flag passed on) for whoever records downstream.
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
    }
    let provider = builder.build();
    let _ = subscriber(&settings, &provider, exporting, std::io::stderr).try_init();
    Telemetry {
        provider,
        exporting,
    }
}

/// The layers: span fields, OpenTelemetry, and the log lines written to `writer`.
fn subscriber<W>(
    settings: &Settings,
    provider: &SdkTracerProvider,
    exporting: bool,
    writer: W,
) -> impl Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("mercato"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_level(false);
    // Spans always (their ids are the propagation); log events become span events only when
    // they are exported, and never below INFO.
    let otel_filter = tracing_subscriber::filter::filter_fn(move |meta| {
        meta.is_span() || (exporting && *meta.level() <= tracing::Level::INFO)
    });
    let filter = settings
        .log_filter
        .clone()
        .unwrap_or_else(|| "info,sqlx=warn,tower_http=warn".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = settings
        .pretty
        .unwrap_or_else(|| std::io::stderr().is_terminal());
    // The event formats read span fields from `SpanFields` (above), never the fmt layer's own
    // per-span text: `SkipSpanFields` keeps that layer from formatting every span's fields
    // into a string nobody reads (2.6% of the CPU of an order, profiled in docs/BENCHMARKS.md).
    let fmt = tracing_subscriber::fmt::layer()
        .fmt_fields(SkipSpanFields)
        .with_writer(writer);
    let fmt = if pretty {
        fmt.event_format(Lines::Pretty).boxed()
    } else {
        fmt.event_format(Lines::Json).boxed()
    };
    tracing_subscriber::registry()
        .with(SpanFieldsLayer)
        .with(otel.with_filter(otel_filter))
        .with(fmt.with_filter(filter))
}

// ---------------------------------------------------------------------------------------------
// Spans and trace context

fn remote_context(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` continue the trace of `traceparent` (a caller's, an envelope's). Call it before
/// the span is first entered. A malformed value leaves the span where it was. A span that
/// declares a `trace_id` field gets it recorded, so pretty log lines show it too.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        let cx = remote_context(tp);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
    if span.has_field("trace_id") {
        if let Some((trace_id, _)) = ids(span) {
            span.record("trace_id", trace_id);
        }
    }
}

/// The W3C `traceparent` naming `span` as the parent, for a header or an envelope; `None` when
/// there is no trace (no subscriber, a disabled span).
pub fn traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The `traceparent` of the span the caller is in.
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// `(trace_id, span_id)` of a span, in hex.
pub fn ids(span: &Span) -> Option<(String, String)> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The service the current span belongs to (see the module doc).
pub fn current_service() -> Option<String> {
    let mut found = None;
    Span::current().with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>() {
            found = registry
                .span(id)
                .and_then(|s| s.extensions().get::<SpanFields>().and_then(|f| f.service()));
        }
    });
    found
}

/// The span of an HTTP call to `dependency`, a child of `parent` (the `traceparent` the call
/// would carry) or else of the current span. Its own `traceparent` goes on the request.
pub fn client_span(dependency: &str, method: &str, url: &str, parent: Option<&str>) -> Span {
    let service = current_service().unwrap_or_default();
    let span = tracing::info_span!(
        "http.client",
        otel.name = %format!("{method} {dependency}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        service = %service,
        peer.service = %dependency,
        http.request.method = %method,
        url.full = %url,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    continue_trace(&span, parent);
    span
}

/// Records the outcome of an HTTP exchange on its span (server or client): the status, and an
/// error status for a 5xx or a failure without an answer.
pub fn record_status(span: &Span, status: Option<u16>, error: Option<&str>) {
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    if let Some(e) = error {
        span.record("error.type", e);
    }
    if error.is_some() || status.is_some_and(|s| s >= 500) {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of one piece of background work (a processor call, an expiry), continuing the
/// trace that caused it when it is known.
pub fn job_span(service: &str, name: &str, aggregate_id: &str, parent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        "job",
        otel.name = %name,
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        service = %service,
        aggregate_id = %aggregate_id,
        trace_id = tracing::field::Empty,
    );
    continue_trace(&span, parent);
    span
}

// ---------------------------------------------------------------------------------------------
// Span fields: kept per span for the JSON lines, and the service for the exporter

/// The fields a span was given (and later recorded), as JSON values.
#[derive(Default, Clone)]
struct SpanFields(serde_json::Map<String, serde_json::Value>);

impl SpanFields {
    fn service(&self) -> Option<String> {
        self.0
            .get("service")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }
}

struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

/// The fmt layer's span field formatter: formats nothing. Both [`Lines`] formats take span
/// fields from [`SpanFields`] and event fields through [`JsonVisitor`], so the text
/// the fmt layer would otherwise keep per span (and rebuild on every `record`) is never read.
struct SkipSpanFields;

impl<'writer> FormatFields<'writer> for SkipSpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        _writer: Writer<'writer>,
        _fields: R,
    ) -> std::fmt::Result {
        Ok(())
    }
}

/// Keeps each span's fields, with `service` inherited from the parent span when not given.
struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut JsonVisitor(&mut fields.0));
        // The OpenTelemetry directives are for the exporter, not for log lines.
        fields.0.retain(|k, _| !k.starts_with("otel."));
        if fields.service().is_none() {
            if let Some(service) = span
                .parent()
                .and_then(|p| p.extensions().get::<SpanFields>().and_then(|f| f.service()))
            {
                fields.0.insert("service".into(), service.into());
            }
        }
        span.extensions_mut().insert(fields);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<SpanFields>() {
            values.record(&mut JsonVisitor(&mut fields.0));
            fields.0.retain(|k, _| !k.starts_with("otel."));
        }
    }
}

/// The trace context of the innermost entered span, for a log line. Entering a span makes its
/// OpenTelemetry context the current one; asking the dispatcher from inside an event would
/// find none (it is busy with this event).
fn entered_span_context() -> Option<opentelemetry::trace::SpanContext> {
    let cx = opentelemetry::Context::current();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// How a log line is written: for machines or for a person.
#[derive(Clone, Copy)]
enum Lines {
    Json,
    Pretty,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let current = ctx.lookup_current();
        match self {
            Lines::Json => {
                let line = json_line(current, event);
                let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
                writeln!(writer, "{text}")
            }
            Lines::Pretty => pretty_line(current, event, writer),
        }
    }
}

/// One JSON object per line: time, level, target, message and the event's fields, then the
/// fields of every span the event is in (innermost wins), the innermost span's name, and its
/// `trace_id` and `span_id`.
fn json_line<S>(
    current: Option<SpanRef<'_, S>>,
    event: &tracing::Event<'_>,
) -> serde_json::Map<String, serde_json::Value>
where
    S: for<'a> LookupSpan<'a>,
{
    let mut line = serde_json::Map::new();
    line.insert(
        "timestamp".into(),
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .into(),
    );
    let meta = event.metadata();
    line.insert("level".into(), meta.level().as_str().into());
    line.insert("target".into(), meta.target().into());
    event.record(&mut JsonVisitor(&mut line));
    if let Some(span) = &current {
        let mut merged = serde_json::Map::new();
        for s in span.scope().from_root() {
            if let Some(f) = s.extensions().get::<SpanFields>() {
                merged.extend(f.0.clone());
            }
        }
        for (k, v) in merged {
            line.entry(k).or_insert(v);
        }
        line.insert("span".into(), span.name().into());
    }
    if let Some(sc) = current.and(entered_span_context()) {
        line.insert("trace_id".into(), sc.trace_id().to_string().into());
        line.insert("span_id".into(), sc.span_id().to_string().into());
    }
    line
}

/// One short line per event for a person: time, level, service, message, the event's own
/// fields, and the first 8 hex digits of the trace (enough to find it in the JSON logs or in
/// Jaeger). The spans' other fields stay out: JSON has them all.
fn pretty_line<S>(
    current: Option<SpanRef<'_, S>>,
    event: &tracing::Event<'_>,
    mut writer: Writer<'_>,
) -> std::fmt::Result
where
    S: for<'a> LookupSpan<'a>,
{
    let ansi = writer.has_ansi_escapes();
    let paint = |code: &str, text: &str| {
        if ansi {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    let meta = event.metadata();
    let level = match *meta.level() {
        tracing::Level::ERROR => paint("31;1", "ERROR"),
        tracing::Level::WARN => paint("33;1", " WARN"),
        tracing::Level::INFO => paint("32", " INFO"),
        tracing::Level::DEBUG => paint("34", "DEBUG"),
        tracing::Level::TRACE => paint("2", "TRACE"),
    };
    let mut fields = serde_json::Map::new();
    event.record(&mut JsonVisitor(&mut fields));
    let message = fields
        .remove("message")
        .and_then(|m| m.as_str().map(str::to_owned))
        .unwrap_or_default();
    let service = current
        .as_ref()
        .and_then(|s| s.extensions().get::<SpanFields>().and_then(|f| f.service()))
        .or_else(|| {
            fields
                .get("service")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    fields.remove("service");
    write!(
        writer,
        "{} {level} {} {message}",
        paint(
            "2",
            &chrono::Local::now().format("%H:%M:%S%.3f").to_string()
        ),
        paint("36", &format!("{service:<9}")),
    )?;
    for (k, v) in fields {
        match v {
            serde_json::Value::String(s) => write!(writer, " {}={s}", paint("2", &k))?,
            other => write!(writer, " {}={other}", paint("2", &k))?,
        }
    }
    if let Some(sc) = current.and(entered_span_context()) {
        let trace = sc.trace_id().to_string();
        write!(writer, " {}", paint("2", &format!("trace={}", &trace[..8])))?;
    }
    writeln!(writer)
}

// ---------------------------------------------------------------------------------------------
// Export

/// Sends each service's spans under a resource naming that service (several services share a
/// process in `mercato up`); one OTLP exporter per service, made on first use.
#[derive(Debug)]
struct PerService {
    endpoint: String,
    default_name: String,
    single_service: Option<String>,
    http: ExportClient,
    exporters: Mutex<HashMap<String, Arc<opentelemetry_otlp::SpanExporter>>>,
}

impl PerService {
    fn new(endpoint: String, default_name: String, single_service: Option<String>) -> Self {
        PerService {
            endpoint,
            default_name,
            single_service,
            http: ExportClient::new(),
            exporters: Mutex::new(HashMap::new()),
        }
    }

    /// The `service.name` of a span's service: the process's name for its own service (or for
    /// spans without one), the service's own name otherwise.
    fn resource_name(&self, service: Option<&str>) -> String {
        match service {
            Some(s) if Some(s) != self.single_service.as_deref() => s.to_owned(),
            _ => self.default_name.clone(),
        }
    }

    fn exporter(&self, name: &str) -> Result<Arc<opentelemetry_otlp::SpanExporter>, String> {
        let mut map = self.exporters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(name) {
            return Ok(e.clone());
        }
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&self.endpoint)
            .with_http_client(self.http.clone())
            .build()
            .map_err(|e| e.to_string())?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(name.to_owned())
                .build(),
        );
        let exporter = Arc::new(exporter);
        map.insert(name.to_owned(), exporter.clone());
        Ok(exporter)
    }
}

fn span_service(span: &SpanData) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == "service")
        .map(|kv| kv.value.to_string())
        .filter(|s| !s.is_empty())
}

impl SpanExporter for PerService {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let mut groups: HashMap<String, Vec<SpanData>> = HashMap::new();
        for span in batch {
            let service = span_service(&span);
            groups
                .entry(self.resource_name(service.as_deref()))
                .or_default()
                .push(span);
        }
        let mut failure = None;
        for (name, spans) in groups {
            let exporter = match self.exporter(&name) {
                Ok(e) => e,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            if let Err(e) = exporter.export(spans).await {
                failure = Some(e.to_string());
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(e)),
        }
    }
}

/// The exporter's HTTP client: the workspace's reqwest, run on the Tokio runtime that set
/// telemetry up (the SDK's batch processor exports from a thread of its own).
#[derive(Clone, Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: Option<tokio::runtime::Handle>,
}

impl ExportClient {
    fn new() -> Self {
        ExportClient {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<opentelemetry_http::Bytes>,
    ) -> Result<http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let request = reqwest::Request::try_from(request.map(reqwest::Body::from))?;
        let exchange = async move {
            let res = http.execute(request).await?;
            let mut out = http::Response::builder().status(res.status());
            for (k, v) in res.headers() {
                out = out.header(k, v);
            }
            let body = res.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
        };
        match &self.runtime {
            Some(rt) => rt.spawn(exchange).await?,
            None => Err("no Tokio runtime to export spans on".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buffer: &Buffer) -> Vec<serde_json::Value> {
        String::from_utf8(buffer.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    #[test]
    fn a_log_line_inside_a_span_carries_its_trace_its_span_and_the_fields_around_it() {
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build();
        let buffer = Buffer::default();
        let settings = Settings {
            pretty: Some(false),
            ..Settings::default()
        };
        let out = buffer.clone();
        let sub = subscriber(&settings, &provider, false, move || out.clone());
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (outer_tp, inner_ids) = tracing::subscriber::with_default(sub, || {
            tracing::info!("outside any span");
            let outer = tracing::info_span!("request", service = "order", request_id = "r-1");
            continue_trace(&outer, Some(caller));
            let _o = outer.enter();
            let inner = client_span("inventory", "GET", "http://inventory/x", None);
            let _i = inner.enter();
            tracing::info!(quantity = 3, "inside");
            (traceparent(&outer).unwrap(), ids(&inner).unwrap())
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        let inside = &lines[1];
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["quantity"], 3);
        assert_eq!(inside["request_id"], "r-1");
        // The client span inherited its service from the span it was made in.
        assert_eq!(inside["service"], "order");
        assert_eq!(inside["span"], "http.client");
        // The caller's trace goes on; the line names the innermost span.
        assert_eq!(inside["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(inside["span_id"], inner_ids.1.as_str());
        assert_ne!(inner_ids.1, "00f067aa0ba902b7");
        // What the request passes on names its own span, in the caller's trace, still sampled.
        assert!(outer_tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!outer_tp.contains("00f067aa0ba902b7"));
        assert!(outer_tp.ends_with("-01"), "{outer_tp}");
    }

    #[test]
    fn the_log_layer_keeps_no_text_of_its_own_per_span() {
        use tracing_subscriber::fmt::format::DefaultFields;
        use tracing_subscriber::fmt::FormattedFields;
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build();
        let settings = Settings {
            pretty: Some(false),
            ..Settings::default()
        };
        let sub = subscriber(&settings, &provider, false, std::io::sink);
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("request", service = "order", request_id = "r-1");
            span.record("request_id", "r-2");
            let id = span.id().expect("an enabled span");
            tracing::dispatcher::get_default(|d| {
                let registry = d
                    .downcast_ref::<tracing_subscriber::Registry>()
                    .expect("the registry under the layers");
                let data = registry.span(&id).expect("the span's data");
                let ext = data.extensions();
                // The JSON lines read these...
                assert_eq!(ext.get::<SpanFields>().unwrap().0["request_id"], "r-2");
                // ...and the fmt layer formats nothing of its own for each span.
                assert!(ext.get::<FormattedFields<DefaultFields>>().is_none());
                let skipped = ext.get::<FormattedFields<SkipSpanFields>>().unwrap();
                assert!(skipped.fields.is_empty(), "{:?}", skipped.fields);
            });
        });
    }

    #[test]
    fn without_an_exporter_a_new_trace_gets_ids_but_is_not_sampled() {
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build();
        let sub = subscriber(&Settings::default(), &provider, false, std::io::sink);
        let tp = tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("request", service = "order");
            traceparent(&span)
        })
        .expect("a trace context to pass on");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert_eq!(parts[3], "00", "{tp}");
    }
}
