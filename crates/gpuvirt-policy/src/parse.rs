//! Syntax and schema: walks a `toml_edit` document (which keeps byte spans) into a typed
//! [`Policy`], collecting every problem with its position instead of stopping at the first.
//!
//! Layout: parse/parser.rs holds the parser state and its typed getters, parse/document.rs
//! the file's top level, parse/rule.rs one `[[gpu]]` rule.
//! May import: crate::{diagnostic, types}, its own children.

mod document;
mod parser;
mod rule;

use std::collections::BTreeMap;

use toml_edit::ImDocument;

use crate::diagnostic::{PolicyDiagnostic, Severity, SourceMap};
use crate::types::Policy;
use parser::Parser;

pub(super) fn parse(text: &str, file_name: &str) -> Result<Policy, Vec<PolicyDiagnostic>> {
    let map = SourceMap::new(file_name, text);
    let mut p = Parser {
        map,
        diagnostics: Vec::new(),
        locations: BTreeMap::new(),
        names: Vec::new(),
    };
    let root_location = p.map.locate(0..0);
    p.locations.insert(String::new(), root_location);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let loc = p.map.locate(span);
            let message = format!("the file is not valid TOML: {}", e.message().trim_end());
            let d = p.map.diagnostic(Severity::Error, &loc, "", message, None);
            return Err(vec![d]);
        }
    };
    let policy = p.document(doc.as_table());
    let mut diagnostics = p.diagnostics;
    diagnostics.sort_by_key(|d| (d.line, d.column));
    if diagnostics.iter().any(PolicyDiagnostic::is_error) {
        return Err(diagnostics);
    }
    let mut policy = policy;
    policy.warnings = diagnostics;
    policy.source = p.map;
    policy.locations = p.locations;
    Ok(policy)
}
