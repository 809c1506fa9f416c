//! Input checks every service applies the same way: text that is safe to store everywhere
//! (no NUL, which PostgreSQL refuses, no control characters), bounded lengths, and a collector
//! so one response names every bad field at once.
//!
//! Plain data, no HTTP: a domain collects its bad fields here and returns them as [`Invalid`];
//! the service's `http.rs` decides which problem (422 for a body, 400 for a query) they become.

use serde::Serialize;
use utoipa::ToSchema;

/// One field that failed validation: its name and what is wrong with it.
// `ToSchema` because this is the shape of each `errors[]` entry of a problem, a wire contract.
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every bad field of one input, in the order they were found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(&self.0))]
pub struct Invalid(pub Vec<FieldError>);

impl Invalid {
    /// One bad field.
    pub fn field(field: &str, message: impl Into<String>) -> Invalid {
        Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// The names of the bad fields, in order.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}

/// `field: message; field: message`, the one-line summary a problem's `detail` carries.
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Default, Debug)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records the error of a parse and returns its value, if any.
    pub fn take<T>(&mut self, field: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.add(field, m);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was recorded, else every bad field as plain data.
    pub fn check(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_invalid())
        }
    }

    /// What was recorded, as plain data, whether or not anything was.
    pub fn into_invalid(self) -> Invalid {
        Invalid(self.0)
    }
}

// `Errors::finish`, the same check answered as a problem document, is defined in
// `crate::problem`: problems are built from these findings, so that module sits above this one.

/// Characters that change how text around them is shown without showing themselves: the
/// bidirectional embeddings, overrides and isolates (a name that reads one way and sorts or
/// compares another, "Trojan Source"), and the zero-width space, word joiner and byte-order
/// mark (two names that look the same). Zero-width (non-)joiners are only refused in
/// single-line texts such as names: in a paragraph they are part of some scripts and emoji.
fn invisible(c: char, multiline: bool) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}' | '\u{2060}' | '\u{FEFF}')
        || (!multiline && matches!(c, '\u{200C}' | '\u{200D}'))
}

/// Checks a single-line text: trimmed, `min..=max` characters, no control characters, no
/// invisible formatting characters (see `invisible`).
pub fn line(value: &str, min: usize, max: usize) -> Result<String, String> {
    text(value, min, max, false)
}

/// Checks a multi-line text: like [`line`] but newlines and tabs are allowed.
pub fn paragraph(value: &str, min: usize, max: usize) -> Result<String, String> {
    text(value, min, max, true)
}

fn text(value: &str, min: usize, max: usize, multiline: bool) -> Result<String, String> {
    let v = value.trim();
    if v.chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\t' | '\r')))
    {
        return Err("must not contain control characters".into());
    }
    if v.chars().any(|c| invisible(c, multiline)) {
        return Err(
            "must not contain invisible formatting characters (bidirectional overrides, zero-width characters)"
                .into(),
        );
    }
    let n = v.chars().count();
    if n < min {
        return Err(if min == 1 {
            "must not be empty".into()
        } else {
            format!("must be at least {min} characters")
        });
    }
    if n > max {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn invisible_formatting_is_refused_in_names() {
        for sneaky in [
            "admin\u{200B}",
            "\u{202E}nimda",
            "a\u{2066}b\u{2069}",
            "\u{FEFF}Casey",
            "Ca\u{200D}sey",
        ] {
            assert!(line(sneaky, 1, 100).is_err(), "{sneaky:?}");
        }
        assert!(line("Zoë Ångström-Łukasz 李", 1, 100).is_ok());
        // In a paragraph a zero-width joiner belongs to emoji and some scripts.
        assert!(paragraph("family: 👨\u{200D}👩\u{200D}👧", 1, 100).is_ok());
        assert!(paragraph("\u{202E}reversed", 1, 100).is_err());
    }

    use super::*;

    #[test]
    fn text_checks() {
        assert_eq!(line("  hi  ", 1, 5).unwrap(), "hi");
        assert!(line("", 1, 5).is_err());
        assert!(line("a\0b", 1, 5).is_err());
        assert!(line("a\nb", 1, 5).is_err());
        assert!(paragraph("a\nb", 1, 5).is_ok());
        assert!(line("abcdef", 1, 5).is_err());
        assert_eq!(line("😀😀😀", 1, 3).unwrap(), "😀😀😀");
    }

    #[test]
    fn errors_collect_every_field() {
        let mut e = Errors::new();
        e.add("a", "bad");
        e.add("b", "worse");
        let p = e.finish().unwrap_err();
        assert_eq!(p.status, 422);
        assert_eq!(p.errors.len(), 2);
    }
}
