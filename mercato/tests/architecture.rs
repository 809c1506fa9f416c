//! The rooms of a service, checked: a service's `domain` (its `domain.rs`, or every file of a
//! `domain/` module) is plain Rust. It names neither HTTP (axum, status codes, problem
//! documents, HTTP clients) nor SQL (sqlx); `http.rs` and `store.rs` translate at the edges.
//!
//! A service's top-level modules also import one way, so each can be read knowing only what
//! it builds on: `http` and `consumer` call the `service`, which calls `store`, `domain` and
//! `events`, never back. And a migration both engines run alike stands once, in the shared folder.
//!
//! The checks read the sources as text, so they need no service to build or run. Comments are
//! left out (a doc comment may say what the module does not do); code, `use` lines included,
//! is what counts.

use mercato_kit::testing::imports::{crate_imports, rust_files};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// What a domain module may not name, and why each one is out of place there.
const FORBIDDEN: &[(&str, &str)] = &[
    ("axum", "the HTTP framework"),
    ("http::", "HTTP types"),
    ("StatusCode", "an HTTP status"),
    ("Problem", "the HTTP error document (problem+json)"),
    ("problem::", "the kit's HTTP error module"),
    ("sqlx", "SQL"),
    ("reqwest", "an HTTP client"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Every source file of every service's domain: `src/domain.rs` and `src/domain/**/*.rs`.
fn domain_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for src in service_sources(root) {
        let file = src.join("domain.rs");
        if file.is_file() {
            files.push(file);
        }
        let folder = src.join("domain");
        if folder.is_dir() {
            rust_files(&folder, &mut files);
        }
    }
    files.sort();
    files
}

/// The line without its `//` comment (doc comments included). A `//` inside a string literal
/// ends the line early too, which can only hide code from the check, never invent a finding;
/// domain code has no reason to spell a URL.
fn code_of(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

/// Whether `word` occurs in `code` as a whole identifier or path segment (so `Problem` is
/// found in `Problem::new` and `mercato_kit::Problem`, but not in `ProblemSolver`).
fn names(code: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(word).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + word.len()..].chars().next();
        // Glued to an identifier character on a side where `word` itself is one: part of
        // a longer name.
        let glued_before = word.starts_with(ident) && before.is_some_and(ident);
        let glued_after = word.ends_with(ident) && after.is_some_and(ident);
        !glued_before && !glued_after
    })
}

/// `path:line: names \`word\` (why)` for each offending line.
fn findings(root: &Path, file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let shown = file
        .strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = code_of(line);
        for (word, why) in FORBIDDEN {
            if names(code, word) {
                out.push(format!(
                    "{shown}:{}: names `{word}` ({why}): {}",
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    out
}

#[test]
fn domain_modules_name_neither_http_nor_sql() {
    let root = workspace_root();
    let files = domain_files(&root);
    // The order, catalog, inventory, cart, payment and auth domains at least: an empty list
    // would mean the walk is broken, not that the rule holds.
    assert!(files.len() >= 6, "found only {files:?}");
    let all: Vec<String> = files.iter().flat_map(|f| findings(&root, f)).collect();
    assert!(
        all.is_empty(),
        "a domain module must stay plain Rust (map errors in http.rs, SQL in store.rs):\n{}",
        all.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_must_and_nothing_else() {
    assert!(names(
        "use mercato_kit::problem::{FieldError, Problem};",
        "Problem"
    ));
    assert!(names("axum::http::StatusCode::BAD_REQUEST", "StatusCode"));
    assert!(names("axum::http::StatusCode::BAD_REQUEST", "axum"));
    assert!(names("use axum::http::StatusCode;", "http::"));
    assert!(names("sqlx::query(\"SELECT 1\")", "sqlx"));
    assert!(names("use mercato_kit::problem::FieldError;", "problem::"));
    assert!(!names("struct ProblemSolver;", "Problem"));
    assert!(!names("let axumlike = 1;", "axum"));
    assert!(!names("use crate::noproblem::X;", "problem::"));
    assert!(!names("let u = \"https://example.com\";", "http::"));
    assert_eq!(code_of("let a = 1; // Problem"), "let a = 1; ");
    assert_eq!(code_of("//! Nothing here touches axum or sqlx."), "");
}

/// Every service crate's `src/`.
fn service_sources(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(root.join("services"))
        .expect("services/ is readable")
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|src| src.is_dir())
        .collect();
    out.sort();
    out
}

/// Each edge of `graph` that lies on a cycle, with where the import is written and the way
/// back: `events -> service (events.rs:10: use crate::service;), back: service -> events`.
fn cycles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<String> {
    // The modules reachable from `from`, each with the path that reaches it.
    let reach = |from: &str| -> BTreeMap<String, Vec<String>> {
        let mut seen = BTreeMap::from([(from.to_owned(), vec![from.to_owned()])]);
        let mut todo = vec![from.to_owned()];
        while let Some(at) = todo.pop() {
            let path = seen[&at].clone();
            for next in graph.get(&at).into_iter().flat_map(|e| e.keys()) {
                if !seen.contains_key(next) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    seen.insert(next.clone(), longer);
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let mut out = Vec::new();
    for (from, edges) in graph {
        for (to, written) in edges {
            if let Some(back) = reach(to).get(from) {
                out.push(format!(
                    "{from} -> {to} ({written}), back: {}",
                    back.join(" -> ")
                ));
            }
        }
    }
    out
}

#[test]
fn a_service_s_modules_import_one_way() {
    let root = workspace_root();
    let sources = service_sources(&root);
    assert!(sources.len() >= 7, "found only {sources:?}");
    let mut found = Vec::new();
    let mut edges = 0;
    for src in &sources {
        let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for i in crate_imports(src) {
            edges += 1;
            graph
                .entry(i.module)
                .or_default()
                .entry(i.import.target)
                .or_insert_with(|| {
                    format!("{}:{}: {}", i.file.display(), i.import.line, i.import.text)
                });
        }
        let shown = src.strip_prefix(&root).unwrap_or(src).display().to_string();
        found.extend(cycles(&graph).into_iter().map(|c| format!("{shown}: {c}")));
    }
    // Services import their own modules all the time: none found means the reader is broken.
    assert!(edges > 50, "only {edges} imports found");
    assert!(
        found.is_empty(),
        "a service's modules import one way (move what both need into the lower one, e.g. the \
         events a service publishes out of the module that consumes events):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_cycle_check_finds_a_cycle_and_only_a_cycle() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string())
                .or_default()
                .insert(b.to_string(), format!("{a}.rs:1"));
        }
        g
    };
    let one_way = graph(&[
        ("http", "service"),
        ("service", "store"),
        ("events", "service"),
    ]);
    assert!(cycles(&one_way).is_empty());
    let around = graph(&[
        ("events", "service"),
        ("service", "store"),
        ("store", "events"),
    ]);
    assert_eq!(cycles(&around).len(), 3);
    assert_eq!(
        cycles(&graph(&[
            ("events", "service"),
            ("service", "events"),
            ("http", "service")
        ])),
        [
            "events -> service (events.rs:1), back: service -> events",
            "service -> events (service.rs:1), back: events -> service",
        ]
    );
}

/// A migration's version: the digits before the first `_` of its file name.
fn version(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let (digits, _) = name.split_once('_')?;
    (name.ends_with(".sql") && digits.chars().all(|c| c.is_ascii_digit())).then(|| digits.into())
}

fn sql_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| version(p).is_some())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The kit and every service keep `migrations/` (both engines) with `sqlite/` and `postgres/`
/// (what differs). The same SQL in both engine folders belongs in the shared one; one version in
/// two folders an engine reads would be applied twice.
#[test]
fn migrations_both_engines_run_alike_stand_once() {
    let root = workspace_root();
    let mut folders = vec![root.join("kit/migrations")];
    folders.extend(service_sources(&root).iter().filter_map(|src| {
        let m = src.parent()?.join("migrations");
        m.is_dir().then_some(m)
    }));
    assert!(folders.len() >= 7, "found only {folders:?}");
    let mut found = Vec::new();
    for dir in &folders {
        let shown = dir.strip_prefix(&root).unwrap_or(dir).display().to_string();
        for engine in ["sqlite", "postgres"] {
            assert!(dir.join(engine).is_dir(), "{shown}/{engine} is missing");
        }
        let shared: BTreeSet<String> = sql_files(dir).iter().filter_map(|f| version(f)).collect();
        for file in sql_files(&dir.join("sqlite")) {
            let twin = dir.join("postgres").join(file.file_name().expect("a file"));
            if fs::read(&twin).ok() == fs::read(&file).ok() {
                found.push(format!(
                    "{shown}: sqlite and postgres hold the same {}: move it to {shown}/",
                    file.display()
                ));
            }
        }
        for engine in ["sqlite", "postgres"] {
            for file in sql_files(&dir.join(engine)) {
                if version(&file).is_some_and(|v| shared.contains(&v)) {
                    found.push(format!(
                        "{shown}: {} has the version of a shared migration",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
