//! The rooms of a service, checked: a service's `domain` (its `domain.rs`, or every file of a
//! `domain/` module) is plain Rust. It names neither HTTP (axum, status codes, problem
//! documents, HTTP clients) nor SQL (sqlx); `http.rs` and `store.rs` translate at the edges.
//!
//! The check reads the sources as text, so it needs no service to build or run. Comments are
//! left out (a doc comment may say what the module does not do); code, `use` lines included,
//! is what counts.

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
    fn rust_files_below(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files_below(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    let services = fs::read_dir(root.join("services")).expect("services/ is readable");
    for service in services.flatten() {
        let src = service.path().join("src");
        let file = src.join("domain.rs");
        if file.is_file() {
            files.push(file);
        }
        rust_files_below(&src.join("domain"), &mut files);
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
