//! Policy diagnostics: where in the file, what is wrong and what is allowed, rendered the way
//! compilers do (`policy.toml:12:9: error: ...`, the offending line and a caret).
//!
//! May import: std and serde only.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// How bad a diagnostic is: errors make a policy invalid, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A place in the policy file: 1-based line and column (in characters), the length of the
/// offending text and the line itself (for the caret display).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    pub length: usize,
    pub source_line: String,
}

/// One problem found in a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDiagnostic {
    pub severity: Severity,
    /// The file name as given to [`Policy::parse`](crate::Policy::parse).
    pub file: String,
    /// 1-based; 0 when the problem has no position (an empty file).
    pub line: usize,
    /// 1-based, counted in characters.
    pub column: usize,
    /// Where in the document, e.g. `gpu[1].shard.type` (array indices are 0-based).
    pub key_path: String,
    /// What is wrong, quoting the offending value.
    pub message: String,
    /// What would be accepted instead, when that can be said.
    pub allowed: Option<String>,
    /// The offending line, for display.
    pub source_line: String,
    /// How many characters the caret underlines (at least 1 when shown).
    pub length: usize,
}

impl PolicyDiagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for PolicyDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.severity, self.message
        )?;
        if self.line > 0 {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            // Tabs before the caret are kept so the caret lines up under a tabbed line.
            let lead: String = self
                .source_line
                .chars()
                .take(self.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let visible = self
                .source_line
                .chars()
                .count()
                .saturating_sub(self.column.saturating_sub(1))
                .max(1);
            let carets = "^".repeat(self.length.clamp(1, visible));
            write!(
                f,
                "\n{pad} |\n{number} | {}\n{pad} | {lead}{carets}",
                self.source_line
            )?;
        }
        if let Some(allowed) = &self.allowed {
            let pad = " ".repeat(self.line.to_string().len());
            write!(f, "\n{pad} = allowed: {allowed}")?;
        }
        Ok(())
    }
}

/// Renders diagnostics one after another, separated by blank lines, with a summary line.
pub fn render_diagnostics(diagnostics: &[PolicyDiagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&d.to_string());
        out.push_str("\n\n");
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    out.push_str(&format!(
        "{errors} error{}, {warnings} warning{}\n",
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" }
    ));
    out
}

/// Turns byte ranges of one document into [`Location`]s.
#[derive(Debug, Clone)]
pub(crate) struct SourceMap {
    file: String,
    text: String,
    line_starts: Vec<usize>,
}

impl SourceMap {
    pub(crate) fn new(file: &str, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            file: file.to_string(),
            text: text.to_string(),
            line_starts,
        }
    }

    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The location of a byte range; positions past the end land on the last line.
    pub(crate) fn locate(&self, span: Range<usize>) -> Location {
        let start = floor_char_boundary(&self.text, span.start.min(self.text.len()));
        let index = match self.line_starts.binary_search(&start) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let line_start = self.line_starts.get(index).copied().unwrap_or(0);
        let line_end = self
            .text
            .get(line_start..)
            .and_then(|rest| rest.find('\n'))
            .map_or(self.text.len(), |n| line_start + n);
        let line_text = self.text.get(line_start..line_end).unwrap_or("");
        let line_text = line_text.strip_suffix('\r').unwrap_or(line_text);
        let column = self
            .text
            .get(line_start..start)
            .map_or(0, |s| s.chars().count())
            + 1;
        // A span running over several lines is underlined to the end of its first line.
        let end = floor_char_boundary(&self.text, span.end.min(line_end).max(start));
        let length = self.text.get(start..end).map_or(1, |s| s.chars().count());
        Location {
            line: index + 1,
            column,
            length,
            source_line: line_text.to_string(),
        }
    }

    pub(crate) fn diagnostic(
        &self,
        severity: Severity,
        location: &Location,
        key_path: &str,
        message: String,
        allowed: Option<String>,
    ) -> PolicyDiagnostic {
        PolicyDiagnostic {
            severity,
            file: self.file.clone(),
            line: location.line,
            column: location.column,
            key_path: key_path.to_string(),
            message,
            allowed,
            source_line: location.source_line.clone(),
            length: location.length,
        }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The closest candidate to `word` (edit distance at most a third of its length, and at
/// least 1, or a case-insensitive prefix), for "did you mean" hints.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (levenshtein(&word_lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| {
            *d <= limit
                || (word_lower.len() >= 3 && c.to_ascii_lowercase().starts_with(&word_lower))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns_in_characters() {
        let map = SourceMap::new("p.toml", "a = 1\n# é\nrole = \"x\"\n");
        let at = map.locate(18..21);
        assert_eq!((at.line, at.column, at.length), (3, 8, 3));
        assert_eq!(at.source_line, "role = \"x\"");
        let after_accent = map.locate(9..10);
        assert_eq!((after_accent.line, after_accent.column), (2, 3));
    }

    #[test]
    fn renders_compiler_style() {
        let map = SourceMap::new("policy.toml", "version = 1\nrol = \"host\"\n");
        let loc = map.locate(12..15);
        let d = map.diagnostic(
            Severity::Error,
            &loc,
            "rol",
            "unknown key `rol`; did you mean `role`?".into(),
            Some("version, role".into()),
        );
        assert_eq!(
            d.to_string(),
            "policy.toml:2:1: error: unknown key `rol`; did you mean `role`?\n  |\n2 | rol = \"host\"\n  | ^^^\n  = allowed: version, role"
        );
    }

    #[test]
    fn suggestions_prefer_the_closest_key() {
        let keys = ["role", "name", "match", "early_method", "early"];
        assert_eq!(suggest("rol", &keys), Some("role"));
        assert_eq!(suggest("erly", &keys), Some("early"));
        assert_eq!(suggest("early_metod", &keys), Some("early_method"));
        assert_eq!(suggest("colour", &keys), None);
    }
}
