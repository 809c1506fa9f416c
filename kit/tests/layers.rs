//! The kit, cut one way: its top-level modules (a file `src/x.rs` or a folder `src/x/`) stand in
//! layers, and a module imports only from layers below its own. Never from its own layer, never
//! from above, so the kit has no import cycle and each module can be read knowing only what
//! lies beneath it.
//!
//! The check reads `src/` as text (`mercato_kit::testing::imports` says what counts), so it
//! needs nothing built or run.

use mercato_kit::testing::imports::{
    code_only, crate_imports, imports, modules_on_disk, without_test_items, FileImport,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, lowest first, and why each stands where it does. A module may import any module
/// of a lower layer and none of its own or a higher one. A new module must be placed here.
const LAYERS: &[(&[&str], &str)] = &[
    (
        &["time", "ids", "validate", "context", "backoff"],
        "plain data every layer passes around (times, typed ids, validation findings, a \
         request's context and header names, the wait between attempts): knows no storage, \
         event, error document or route",
    ),
    (
        &["telemetry", "server", "openapi"],
        "process machinery (tracing, the listener, the API document's finishing touches): \
         needs plain data at most, so storage, events and HTTP can all be traced and served",
    ),
    (
        &["db"],
        "storage: rows, transactions and the outbox waker the database holds; it knows that \
         someone waits for outbox rows, not who",
    ),
    (
        &["problem", "config"],
        "the error document and the typed settings: made from what storage and validation \
         report (a db::Error, a DatabaseUrl), used by everything that answers or starts",
    ),
    (
        &["events"],
        "the envelope, the outbox, the bus, the relay and consumers: written through storage's \
         transactions and traced; they never answer HTTP (their admin routes live in http::admin)",
    ),
    (
        &["client", "chaos", "contracts", "health", "metrics"],
        "a service's parts over storage and events: the resilient HTTP client, the chaos \
         switch, the event contracts, health checks and metrics; none needs another",
    ),
    (
        &["auth", "redis"],
        "identity and shared stores: token checks call the auth service through the client; \
         Redis reads the settings and reports through a health check",
    ),
    (
        &["http"],
        "the HTTP skeleton every service runs on (middleware, extractors, operational routes) \
         and the admin routes over chaos and consumers, which need all of the above",
    ),
    (
        &["idempotency", "audit", "demo", "testing"],
        "what is built on a whole service: idempotent handlers, the audit routes, demo data, \
         support for the services' tests; nothing in the kit builds on them",
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Each top-level module's layer (its index in [`LAYERS`]).
fn layer_of() -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for (n, (modules, _)) in LAYERS.iter().enumerate() {
        for m in *modules {
            assert!(out.insert(*m, n).is_none(), "{m} stands in two layers");
        }
    }
    out
}

/// Every finding: `file:line: a (layer n) imports b (layer m): the line`.
fn violations(src: &Path) -> Vec<String> {
    let layers = layer_of();
    let mut out = Vec::new();
    for FileImport {
        file,
        module: own,
        import,
    } in crate_imports(src)
    {
        let own_layer = layers[own.as_str()];
        let theirs = layers[import.target.as_str()];
        if theirs >= own_layer {
            out.push(format!(
                "kit/src/{}:{}: {own} (layer {}) imports {} (layer {}{}): {}",
                file.display(),
                import.line,
                own_layer + 1,
                import.target,
                theirs + 1,
                if theirs == own_layer {
                    ", its own"
                } else {
                    ", above"
                },
                import.text,
            ));
        }
    }
    out
}

#[test]
fn every_module_stands_in_one_layer() {
    let layers = layer_of();
    let on_disk = modules_on_disk(&src());
    let unplaced: Vec<&String> = on_disk
        .iter()
        .filter(|m| !layers.contains_key(m.as_str()))
        .collect();
    let gone: Vec<&&str> = layers
        .keys()
        .filter(|m| !on_disk.iter().any(|d| d == *m))
        .collect();
    assert!(
        unplaced.is_empty(),
        "place these kit modules in LAYERS (kit/tests/layers.rs), with the reason: {unplaced:?}"
    );
    assert!(
        gone.is_empty(),
        "LAYERS names modules kit/src does not have: {gone:?}"
    );
}

#[test]
fn kit_modules_import_only_from_layers_below() {
    let found = violations(&src());
    assert!(
        found.is_empty(),
        "a kit module may import only from a lower layer (see LAYERS in kit/tests/layers.rs: \
         move the plain part down, or the part that needs the higher module up):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_must_and_nothing_else() {
    let modules: Vec<String> = ["db", "http", "problem", "events"]
        .map(String::from)
        .to_vec();
    let reexports = BTreeMap::from([("Problem".to_owned(), "problem".to_owned())]);
    let targets = |text: &str, module: &[&str]| -> Vec<String> {
        let module: Vec<String> = module.iter().map(|m| m.to_string()).collect();
        let code = without_test_items(&code_only(text));
        imports(&code, &module, &modules, &reexports)
            .into_iter()
            .map(|i| i.target)
            .collect()
    };
    assert_eq!(targets("use crate::http::Json;", &["events"]), ["http"]);
    assert_eq!(
        targets("use crate::{db::Tx, http::{Json, Path}};", &["events"]),
        ["db", "http"]
    );
    assert_eq!(targets("let q = crate::db::query(sql);", &["x"]), ["db"]);
    assert_eq!(targets("use crate::Problem;", &["x"]), ["problem"]);
    // `super` from a folder's file reaches its siblings only after climbing to the root.
    assert_eq!(targets("use super::db::Tx;", &["events"]), ["db"]);
    assert!(targets("use super::bus::Bus;", &["events", "consumer"]).is_empty());
    assert_eq!(
        targets("use super::super::http::Json;", &["events", "consumer"]),
        ["http"]
    );
    // Comments, strings and test items do not count.
    assert!(targets("// crate::http::Json\n/// [`crate::http`]", &["x"]).is_empty());
    assert!(targets("/* crate::http */ let s = \"crate::http\";", &["x"]).is_empty());
    assert!(targets("let s = r#\"crate::http\"#; let c = '\"';", &["x"]).is_empty());
    assert!(targets(
        "#[cfg(test)]\nmod tests {\n    use crate::http::Json;\n    fn f() { {} }\n}\n",
        &["x"]
    )
    .is_empty());
    assert!(targets("#[cfg(test)]\nuse crate::http::Json;", &["x"]).is_empty());
    // ...but code after a test item does, and an inline module's `super` is not the root.
    assert_eq!(
        targets(
            "#[cfg(test)]\nmod tests {}\nuse crate::db::Tx;\nmod inner { use super::http; }",
            &["x"]
        ),
        ["db"]
    );
    assert!(targets("fn f<'a>(s: &'a str) -> &'a str { s }", &["x"]).is_empty());
}
