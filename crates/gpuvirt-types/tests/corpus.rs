//! The mdevctl document corpus (`tests/corpus/`): each `NAME.json` is a document in the shapes
//! mdevctl 1.x writes (its files below `/etc/mdevctl.d/<parent>/<uuid>` and `mdevctl list
//! --dumpjson`), valid or broken, and `NAME.expect` says what reading it must give:
//!
//! - `file: P` the path the document is read as (default `NAME.json`); `parent: X`, `uuid: U`
//!   what the caller gives (`--parent`, `--uuid`);
//! - `ok: N` read as N definitions; `exact: yes` written back (one file's contents, or the
//!   `--dumpjson` document) it is the same bytes, as mdevctl writes them;
//! - `error: PHRASE` refused, the message holding every such phrase (the entry and the
//!   field); `absent: PHRASE` a phrase it must not hold.
//!
//! The daemon's import test reads the same corpus (gpuvirtd `tests/shard.rs`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use gpuvirt_types::mdevctl::{dump_json, is_dumpjson, parse_import};
use uuid::Uuid;

#[derive(Debug, Default)]
struct Expect {
    file: Option<String>,
    parent: Option<String>,
    uuid: Option<Uuid>,
    ok: Option<usize>,
    exact: bool,
    errors: Vec<String>,
    absent: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn read_expect(path: &Path) -> Expect {
    let mut e = Expect::default();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("{}: {line:?} is not `key: value`", path.display()));
        match key {
            "file" => e.file = Some(value.to_owned()),
            "parent" => e.parent = Some(value.to_owned()),
            "uuid" => e.uuid = Some(value.parse().unwrap()),
            "ok" => e.ok = Some(value.parse().unwrap()),
            "exact" => e.exact = value == "yes",
            "error" => e.errors.push(value.to_owned()),
            "absent" => e.absent.push(value.to_owned()),
            _ => panic!("{}: unknown key {key:?}", path.display()),
        }
    }
    assert!(
        e.ok.is_some() == e.errors.is_empty(),
        "{}: say either ok or error",
        path.display()
    );
    e
}

#[test]
fn every_corpus_document_reads_as_expected() {
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    names.sort();
    let (mut valid, mut broken) = (0, 0);
    for name in &names {
        let dir = corpus_dir();
        let expect = read_expect(&dir.join(format!("{name}.expect")));
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
        let path = PathBuf::from(expect.file.clone().unwrap_or(format!("{name}.json")));
        let read = parse_import(&path, &text, expect.parent.as_deref(), expect.uuid);
        match (expect.ok, read) {
            (Some(n), Ok(configs)) => {
                valid += 1;
                assert_eq!(configs.len(), n, "{name}: {configs:?}");
                if expect.exact {
                    let back = if is_dumpjson(&text) {
                        dump_json(&configs)
                    } else {
                        configs[0].to_json()
                    };
                    assert_eq!(back, text, "{name}: not written back byte for byte");
                }
            }
            (Some(_), Err(e)) => panic!("{name}: refused: {e}"),
            (None, Ok(configs)) => panic!("{name}: accepted, expected a refusal: {configs:?}"),
            (None, Err(e)) => {
                broken += 1;
                let message = e.to_string();
                for phrase in &expect.errors {
                    assert!(
                        message.contains(phrase),
                        "{name}: {message:?} lacks {phrase:?}"
                    );
                }
                for phrase in &expect.absent {
                    assert!(
                        !message.contains(phrase),
                        "{name}: {message:?} has {phrase:?}"
                    );
                }
                // One subject: the document is named once, at the start.
                assert!(
                    message.starts_with(&format!("mdevctl config {}", path.display())),
                    "{name}: {message:?}"
                );
                assert_eq!(
                    message.matches(&path.display().to_string()).count(),
                    1,
                    "{name}: {message:?}"
                );
            }
        }
    }
    // The corpus is what it says: nothing silently skipped.
    assert!(valid >= 8 && broken >= 18, "{valid} valid, {broken} broken");
}

/// The exact bytes of mdevctl's own output for the shapes gpuvirt writes: an empty host is
/// `[]` (mdevctl's `format_json` writes no `{}` for no parents), and no document or file ends
/// in a newline (mdevctl 1.4 writes `to_string_pretty`'s bytes as they are).
#[test]
fn written_documents_end_as_mdevctl_writes_them() {
    assert_eq!(dump_json(&[]), "[]");
    for name in [
        "valid-one-parent",
        "valid-multi-parent",
        "valid-single-file",
    ] {
        let text = std::fs::read_to_string(corpus_dir().join(format!("{name}.json"))).unwrap();
        assert!(!text.ends_with('\n'), "{name}");
        assert!(text.ends_with('}') || text.ends_with(']'), "{name}");
    }
}
