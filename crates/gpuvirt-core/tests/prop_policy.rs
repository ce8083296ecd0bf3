//! Property tests for the policy parser, validator and planner: random text, and mutations of
//! every policy in the corpus (`tests/data/policy/**`) with hostile values spliced in.
//!
//! Whatever the text: `Policy::parse` never panics; a refusal carries at least one error, each
//! with a position inside the file and a message; an accepted policy validates against every
//! test host without panicking, and every step the planner derives from it writes only below
//! `sys/` or `etc/` through plain path components.
//!
//! 256 cases per property by default; `PROPTEST_CASES=N` scales up.

#![allow(clippy::unwrap_used)]

#[path = "policy_hosts/mod.rs"]
mod hosts;

mod fuzz_support;
use fuzz_support::Fuzz;
use std::fs;
use std::path::{Component, Path, PathBuf};

use gpuvirt_core::plan::action::Step;
use gpuvirt_core::plan::{plan, PlanState};
use gpuvirt_core::policy::{render_diagnostics, Policy, PolicyOnHost};
use gpuvirt_core::Inventory;
use proptest::prelude::*;

/// Every `.toml` policy in the corpus, good and bad.
fn corpus() -> Vec<String> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/policy");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in fs::read_dir(&base).unwrap() {
        for f in fs::read_dir(dir.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 20, "the policy corpus went missing");
    files
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect()
}

fn hosts() -> Vec<Inventory> {
    vec![
        hosts::runbook(),
        hosts::workstation(),
        hosts::nic_shared_group(),
        hosts::hopper(4),
        hosts::sriov_host(),
    ]
}

/// Tokens that stress a TOML policy: traversal in names and types, NUL and control characters,
/// quotes, table headers, huge numbers, wrong types, duplicate keys.
const HOSTILE: &[&str] = &[
    "../../../etc/shadow",
    "\"../x\"",
    "\\u0000",
    "\0",
    "\u{7}",
    "\r\n",
    "\"",
    "'''",
    "[[gpu]]",
    "[host]",
    "= ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "99999999999999999999",
    "-1",
    "0x",
    "1e400",
    "true",
    "\"max\"",
    "nan",
    "é",
    "\u{10ffff}",
    "role = \"passthrough\"",
    "role = \"shard\"",
    "shard = { type = \"../../../../tmp/x\", count = 2 }",
    "match = { address = \"0000:41:00.0/../../\" }",
    "match = { driver = \"nvidia\\nblacklist evil\" }",
    "blacklist = [\"nouveau\\ninstall x /bin/sh\"]",
    "name = \"\\u0000\"",
    "version = 1",
    "early = true",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Insert a hostile token at a character offset.
    Insert(prop::sample::Index, prop::sample::Index),
    /// Delete a character range.
    Delete(prop::sample::Index, usize),
    /// Repeat one line.
    DuplicateLine(prop::sample::Index),
    /// Replace one character with another.
    Replace(prop::sample::Index, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Insert(a, b)),
        2 => (any::<prop::sample::Index>(), 1usize..40).prop_map(|(a, n)| Mutation::Delete(a, n)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::DuplicateLine),
        2 => (any::<prop::sample::Index>(), any::<char>()).prop_map(|(a, c)| Mutation::Replace(a, c)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: &prop::sample::Index| i.index(chars.len() + 1);
    match m {
        Mutation::Insert(i, t) => {
            let i = at(i);
            let token = HOSTILE[t.index(HOSTILE.len())];
            chars[..i]
                .iter()
                .copied()
                .chain(token.chars())
                .chain(chars[i..].iter().copied())
                .collect()
        }
        Mutation::Delete(i, n) => {
            let i = at(i);
            let end = (i + n).min(chars.len());
            chars[..i].iter().chain(&chars[end..]).collect()
        }
        Mutation::DuplicateLine(i) => {
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                return text.to_string();
            }
            let i = i.index(lines.len());
            let mut out: Vec<&str> = lines[..=i].to_vec();
            out.extend(&lines[i..]);
            out.join("\n")
        }
        Mutation::Replace(i, c) => {
            let mut chars = chars;
            if !chars.is_empty() {
                let i = i.index(chars.len());
                chars[i] = *c;
            }
            chars.into_iter().collect()
        }
    }
}

/// A planned step's path stays below `sys/` or `etc/` through ordinary components.
fn assert_contained(path: &Path) {
    let parts: Vec<Component<'_>> = path.components().collect();
    assert!(
        parts.iter().all(|c| matches!(c, Component::Normal(_))),
        "step path {} has a non-plain component",
        path.display()
    );
    let first = parts.first().and_then(|c| c.as_os_str().to_str());
    assert!(
        matches!(first, Some("sys") | Some("etc")),
        "step path {} is outside sys/ and etc/",
        path.display()
    );
    assert!(!path.to_string_lossy().contains('\0'));
}

/// Parses `text` and checks every property; returns whether it was accepted.
fn check(text: &str, hosts: &[Inventory]) -> bool {
    let line_count = text.lines().count().max(1);
    match Policy::parse(text, "fuzz.toml") {
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "a refusal with no diagnostic");
            assert!(
                diagnostics.iter().any(|d| d.is_error()),
                "a refusal with only warnings: {diagnostics:?}"
            );
            for d in &diagnostics {
                assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
                assert!(d.line <= line_count + 1, "line out of range: {d:?}");
                assert!(d.line == 0 || d.column >= 1, "column 0: {d:?}");
                assert_eq!(d.file, "fuzz.toml");
            }
            // Rendering (carets under tabs and wide characters) must not panic either.
            let rendered = render_diagnostics(&diagnostics);
            assert!(rendered.contains("fuzz.toml:"));
            false
        }
        Ok(policy) => {
            for inv in hosts {
                for d in policy.validate_against(inv) {
                    assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
                    assert!(d.line <= line_count + 1, "line out of range: {d:?}");
                    let _ = d.to_string();
                }
                let planned = plan(&policy, inv, &PlanState::default());
                for a in &planned.actions {
                    for step in &a.steps {
                        match step {
                            Step::Write { path, .. }
                            | Step::WriteFile { path, .. }
                            | Step::RemoveFile { path } => assert_contained(path),
                            Step::Modprobe { module } => {
                                gpuvirt_core::pathsafe::module(module).unwrap();
                            }
                            Step::Run { .. } => {}
                        }
                    }
                }
            }
            true
        }
    }
}

#[test]
fn arbitrary_text_never_panics() {
    let fuzz = Fuzz::new(file!(), "arbitrary_text_never_panics", 256);
    proptest!(fuzz.config(), |(text in prop_oneof![".*", "[ -~\\n\\t]{0,400}"])| {
        if !fuzz.hit() {
            return Ok(());
        }
        check(&text, &hosts());
    });
    fuzz.report();
}

#[test]
fn mutated_corpus_policies_are_handled() {
    let fuzz = Fuzz::new(file!(), "mutated_corpus_policies_are_handled", 256);
    proptest!(fuzz.config(), |(
        which in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    )| {
        if !fuzz.hit() {
            return Ok(());
        }
        let corpus = corpus();
        let mut text = corpus[which.index(corpus.len())].clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        check(&text, &hosts());
    });
    fuzz.report();
}

/// The corpus itself goes through the same checks, and some of it is accepted (so the mutation
/// property exercises the validator and planner, not only the parser).
#[test]
fn corpus_policies_pass_the_checks() {
    let hosts = hosts();
    let accepted = corpus().iter().filter(|t| check(t, &hosts)).count();
    assert!(accepted >= 5, "only {accepted} corpus policies parsed");
}

/// Hostile values in the places that become paths or boot-file lines are refused with a
/// diagnostic at the value, not carried into a plan.
#[test]
fn hostile_values_are_refused_where_they_stand() {
    let cases = [
        ("[host]\nblacklist = [\"nouveau\\ninstall x /bin/sh\"]\n", 3),
        ("[host]\nblacklist = [\"../../etc/passwd\"]\n", 3),
        (
            "[host.options]\nnouveau = \"modeset=0\\ninstall x /bin/sh\"\n",
            3,
        ),
        (
            "[[gpu]]\nname = \"a\"\nmatch = { driver = \"../nvidia\" }\nrole = \"host\"\n",
            4,
        ),
        (
            "[[gpu]]\nname = \"a\"\nmatch = { address = \"0000:41:00.0/..\" }\nrole = \"host\"\n",
            4,
        ),
    ];
    for (body, line) in cases {
        let text = format!("version = 1\n{body}");
        let diagnostics = Policy::parse(&text, "p.toml").expect_err(&text);
        assert!(
            diagnostics.iter().any(|d| d.is_error() && d.line == line),
            "{text}\n{}",
            render_diagnostics(&diagnostics)
        );
    }
}
