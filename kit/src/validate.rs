//! Input checks every service applies the same way: text that is safe to store everywhere
//! (no NUL, which PostgreSQL refuses, no control characters), bounded lengths, and a collector
//! so one response names every bad field at once.

use crate::problem::{FieldError, Problem};

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

    /// `Ok` when nothing was recorded, else a 422 problem naming every field.
    pub fn finish(self) -> Result<(), Problem> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(self.0))
        }
    }
}

/// Checks a single-line text: trimmed, `min..=max` characters, no control characters.
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
