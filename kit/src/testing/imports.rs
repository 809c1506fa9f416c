//! Reads a crate's sources as text and says which of its top-level modules (a file
//! `src/x.rs` or a folder `src/x/`) each file imports: what the kit's layer check
//! (`kit/tests/layers.rs`) and the services' check of one-way modules
//! (`mercato/tests/architecture.rs`) stand on. Hand-written because what they need is a
//! module graph of one crate, without building it; `syn` would parse the code but still leave
//! paths, `super` chains and re-exports to resolve, which is most of this file.
//!
//! What counts is code: comments, string literals and `#[cfg(test)]` items are left out (a unit
//! test may reach anywhere; a doc link may point up). A path counts wherever it appears, in a
//! `use` or inline: `crate::x`, `crate::{x, y}`, `super::` chains that climb to the crate root,
//! and the names `lib.rs` re-exports (`crate::Problem` is `problem`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// One file's import of a top-level module of its crate.
#[derive(Debug, PartialEq)]
pub struct FileImport {
    /// The importing file, relative to `src/`.
    pub file: PathBuf,
    /// The top-level module the file belongs to.
    pub module: String,
    pub import: Import,
}

/// Every import, by every file below `src`, of a top-level module other than the file's own.
/// `lib.rs` is left out: it declares the modules, it is not one of them.
pub fn crate_imports(src: &Path) -> Vec<FileImport> {
    let modules = modules_on_disk(src);
    let reexports = root_reexports(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let Ok(rel) = path.strip_prefix(src) else {
            continue;
        };
        let mut module: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        let Some(own) = module
            .first()
            .filter(|m| *m != "lib" && *m != "main")
            .cloned()
        else {
            continue;
        };
        let text = fs::read_to_string(&path).expect("readable");
        let code = without_test_items(&code_only(&text));
        for import in imports(&code, &module, &modules, &reexports) {
            if import.target != own {
                out.push(FileImport {
                    file: rel.to_path_buf(),
                    module: own.clone(),
                    import,
                });
            }
        }
    }
    out
}

/// The top-level modules as the tree has them: `src/x.rs` and `src/x/`, without `lib.rs`.
pub fn modules_on_disk(src: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(src)
        .expect("src/ is readable")
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_stem()?.to_str()?.to_owned();
            let module = path.is_dir() || path.extension().is_some_and(|x| x == "rs");
            (module && name != "lib").then_some(name)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every `.rs` file below `dir`.
pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text with comments and the insides of string and char literals blanked out (newlines
/// kept, so line numbers stay right).
pub fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r' && matches!(next, Some('"') | Some('#')) && !ident_before(&c, i) {
            // A raw string: r"...", r#"..."#, ...
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            out.extend(std::iter::repeat_n(' ', j - i + 1));
            i = j + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                out.push(blank(c[i]));
                i += 1;
            }
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\''), not a lifetime ('a).
            out.push(' ');
            i += 1;
            if c.get(i) == Some(&'\\') {
                out.push_str("  ");
                i += 2;
            }
            while i < c.len() && c[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ident_before(c: &[char], i: usize) -> bool {
    i > 0 && ident_char(c[i - 1])
}

/// The code with every `#[cfg(test)]` item blanked out: the attribute, any attributes after
/// it, and the item up to its `;` or its closing brace.
pub fn without_test_items(code: &str) -> String {
    const CFG_TEST: &str = "#[cfg(test)]";
    let mut out: Vec<char> = code.chars().collect();
    let text: String = out.iter().collect();
    let mut from = 0;
    while let Some(at) = text[from..].find(CFG_TEST).map(|k| k + from) {
        let start = text[..at].chars().count();
        let c = &out;
        let mut i = start;
        let mut depth = 0usize;
        let mut brackets = 0usize;
        // Skip this attribute and those after it, then the item itself.
        while i < c.len() {
            match c[i] {
                '[' => brackets += 1,
                ']' => brackets = brackets.saturating_sub(1),
                '{' if brackets == 0 => depth += 1,
                '}' if brackets == 0 => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                ';' if brackets == 0 && depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        for ch in out.iter_mut().take(i).skip(start) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        from = at + CFG_TEST.len();
    }
    out.into_iter().collect()
}

/// The names `lib.rs` re-exports at the crate root, with the module each comes from
/// (`pub use problem::Problem;` makes `crate::Problem` an import of `problem`).
pub fn root_reexports(src: &Path) -> BTreeMap<String, String> {
    let lib = fs::read_to_string(src.join("lib.rs")).expect("lib.rs is readable");
    let mut out = BTreeMap::new();
    for line in code_only(&lib).lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names.trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            let name = name.split(" as ").last().unwrap_or(name).trim();
            let name = name.rsplit("::").next().unwrap_or(name);
            out.insert(name.to_owned(), module.trim().to_owned());
        }
    }
    out
}

/// One import of a top-level module: where, of which module, and the line as written.
#[derive(Debug, PartialEq)]
pub struct Import {
    pub line: usize,
    pub target: String,
    pub text: String,
}

fn ident_at(c: &[char], mut i: usize) -> (String, usize) {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < c.len() && ident_char(c[i]) {
        i += 1;
    }
    (c[start..i].iter().collect(), i)
}

/// The first path segments named at the crate root from `c[i..]`: `x` of `x::y`, and each
/// `x` of `{x::y, z}`.
fn segments_at(c: &[char], i: usize) -> Vec<String> {
    let mut j = i;
    while j < c.len() && c[j].is_whitespace() {
        j += 1;
    }
    if c.get(j) != Some(&'{') {
        let (name, _) = ident_at(c, j);
        return vec![name];
    }
    let mut out = Vec::new();
    let mut depth = 0;
    let mut at_start = true;
    for k in j..c.len() {
        match c[k] {
            '{' => {
                depth += 1;
                if depth == 1 {
                    at_start = true;
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                at_start = true;
                continue;
            }
            _ => {}
        }
        if depth == 1 && at_start && !c[k].is_whitespace() {
            out.push(ident_at(c, k).0);
            at_start = false;
        }
    }
    out
}

/// What `code` (one file's code, of module path `module`: `["events", "consumer"]` for
/// `events/consumer.rs`) names at the crate root, mapped through `reexports` and kept to the
/// names in `modules`.
pub fn imports(
    code: &str,
    module: &[String],
    modules: &[String],
    reexports: &BTreeMap<String, String>,
) -> Vec<Import> {
    let c: Vec<char> = code.chars().collect();
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    let mut line = 1;
    // How deep inside inline `mod x { ... }` blocks we are, as brace depths where each began.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
        } else if ch == '{' {
            depth += 1;
        } else if ch == '}' {
            depth = depth.saturating_sub(1);
            if inline_mods.last() == Some(&depth) {
                inline_mods.pop();
            }
        }
        if ident_before(&c, i) || !ident_char(ch) {
            i += 1;
            continue;
        }
        let (word, end) = ident_at(&c, i);
        let rooted = |after: usize| -> Option<usize> {
            let rest: String = c[after..c.len().min(after + 2)].iter().collect();
            (rest == "::").then_some(after + 2)
        };
        let mut found: Option<usize> = None;
        if word == "mod" {
            let (_, after_name) = ident_at(&c, end);
            let mut k = after_name;
            while k < c.len() && c[k].is_whitespace() {
                k += 1;
            }
            if c.get(k) == Some(&'{') {
                inline_mods.push(depth);
            }
        } else if word == "crate" && (i == 0 || c[i - 1] != '$') {
            found = rooted(end);
        } else if word == "super" {
            // Climb: each `super` leaves one module; past the file's own path is the root.
            let mut levels = 1;
            let mut k = end;
            while let Some(after) = rooted(k) {
                let (next, next_end) = ident_at(&c, after);
                if next != "super" {
                    break;
                }
                levels += 1;
                k = next_end;
            }
            if levels >= module.len() + inline_mods.len() {
                found = rooted(k);
            }
            i = k;
        }
        if let Some(at) = found {
            for name in segments_at(&c, at) {
                let target = reexports.get(&name).cloned().unwrap_or(name);
                if modules.contains(&target) {
                    out.push(Import {
                        line,
                        target,
                        text: lines.get(line - 1).unwrap_or(&"").trim().to_owned(),
                    });
                }
            }
        }
        i = i.max(end);
    }
    out
}
