//! mdevctl's definition format: byte-compatible export (mdevctl's own expected files), import of
//! what mdevctl and hand edits write, round trips with ordered attrs and both start modes,
//! typed errors naming the file, and ledger import/export that keeps ownership straight.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use gpuvirt_core::ledger::{Ledger, MdevRecord, MdevStart};
use gpuvirt_core::mdevctl::{
    definitions, dump_json, export, import, parse_config, parse_document, read_all, read_config,
    remove_config, write_config, MdevctlConfig, MdevctlError,
};
use gpuvirt_core::shard::{owner_of, Owner};
use gpuvirt_core::Root;
use uuid::Uuid;

const U1: &str = "bc127e23-aaaa-4d06-a7aa-88db2dd538e0";
const U2: &str = "1360ce4b-2ed2-4f63-abb6-8cdb92100085";

fn config(uuid: &str, start: MdevStart, attrs: &[(&str, &str)]) -> MdevctlConfig {
    MdevctlConfig {
        uuid: uuid.parse().unwrap(),
        parent: "0000:41:00.0".into(),
        mdev_type: "nvidia-300".into(),
        start,
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn export_is_byte_identical_to_what_mdevctl_writes() {
    // mdevctl 1.x, testdata/define/uuid-running-removed-active-parent.expected: no attrs.
    let mut c = config(U1, MdevStart::Manual, &[]);
    c.mdev_type = "i915-GVTg_V5_4".into();
    assert_eq!(
        c.to_json(),
        "{\n  \"mdev_type\": \"i915-GVTg_V5_4\",\n  \"start\": \"manual\",\n  \"attrs\": []\n}"
    );
    // mdevctl tests/modify/addattr/expected: ordered attrs with a repeated name.
    let mut c = config(
        U1,
        MdevStart::Manual,
        &[
            ("assign_adapter", "5"),
            ("assign_adapter", "6"),
            ("assign_domain", "0xab"),
            ("added-attr", "added-attr-value"),
            ("assign_control_domain", "0xab"),
            ("assign_domain", "4"),
            ("assign_control_domain", "4"),
        ],
    );
    c.mdev_type = "vfio_ap-passthrough".into();
    let expected = r#"{
  "mdev_type": "vfio_ap-passthrough",
  "start": "manual",
  "attrs": [
    {
      "assign_adapter": "5"
    },
    {
      "assign_adapter": "6"
    },
    {
      "assign_domain": "0xab"
    },
    {
      "added-attr": "added-attr-value"
    },
    {
      "assign_control_domain": "0xab"
    },
    {
      "assign_domain": "4"
    },
    {
      "assign_control_domain": "4"
    }
  ]
}"#;
    assert_eq!(c.to_json(), expected);
}

#[test]
fn round_trips_ordered_attrs_and_both_start_modes_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let written = vec![
        config(
            U1,
            MdevStart::Auto,
            &[("z_last", "1"), ("a_first", "2"), ("z_last", "3")],
        ),
        config(U2, MdevStart::Manual, &[]),
    ];
    for c in &written {
        let path = write_config(&root, c).unwrap();
        assert_eq!(
            path,
            dir.path()
                .join("etc/mdevctl.d/0000:41:00.0")
                .join(c.uuid.to_string())
        );
        assert_eq!(read_config(&path).unwrap(), *c);
        // Writing what was read gives the same bytes.
        assert_eq!(fs::read_to_string(&path).unwrap(), c.to_json());
    }
    let scan = read_all(&root);
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    let mut expected = written.clone();
    expected.sort_by_key(|c| c.uuid);
    assert_eq!(scan.configs, expected);
    // No temporaries left behind.
    let names: Vec<String> = fs::read_dir(dir.path().join("etc/mdevctl.d/0000:41:00.0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    remove_config(&root, "0000:41:00.0", U2.parse().unwrap()).unwrap();
    remove_config(&root, "0000:41:00.0", U2.parse().unwrap()).unwrap();
    assert_eq!(read_all(&root).configs, vec![written[0].clone()]);
}

#[test]
fn reads_other_key_orders_null_attrs_and_unknown_keys_as_mdevctl_does() {
    let p = Path::new("etc/mdevctl.d/mbochs/x");
    let u: Uuid = U1.parse().unwrap();
    // serde_json without preserve_order (sorted keys) and a trailing newline.
    let c = parse_config(
        p,
        "mbochs",
        u,
        "{\"attrs\":[{\"a\":\"1\"}],\"mdev_type\":\"mbochs-small\",\"start\":\"auto\",\"x\":5}\n",
    )
    .unwrap();
    assert_eq!(c.attrs, vec![("a".to_string(), "1".to_string())]);
    assert_eq!(c.start, MdevStart::Auto);
    // The bash-era format had no attrs key; null is accepted too.
    for text in [
        "{\"mdev_type\": \"mbochs-small\", \"start\": \"manual\"}",
        "{\"mdev_type\": \"mbochs-small\", \"start\": \"manual\", \"attrs\": null}",
    ] {
        let c = parse_config(p, "mbochs", u, text).unwrap();
        assert!(c.attrs.is_empty());
        assert_eq!(c.start, MdevStart::Manual);
    }
}

#[test]
fn malformed_configs_are_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let base = dir.path().join("etc/mdevctl.d");
    let cases = [
        ("0000:41:00.0", U1, "{not json", "key must be a string"),
        ("0000:41:00.0", U2, "[1, 2]", "it is not a JSON object"),
        (
            "mbochs",
            U1,
            "{\"start\": \"auto\"}",
            "mdev_type is missing",
        ),
        (
            "mbochs",
            U2,
            "{\"mdev_type\": \"t\", \"start\": \"sometimes\"}",
            "start is \"sometimes\", expected \"auto\" or \"manual\"",
        ),
        (
            "mdpy",
            U1,
            "{\"mdev_type\": \"t\", \"start\": \"auto\", \"attrs\": [{\"a\": \"1\", \"b\": \"2\"}]}",
            "attrs[0] is not an object with one entry",
        ),
        (
            "mdpy",
            U2,
            "{\"mdev_type\": \"t\", \"start\": \"auto\", \"attrs\": [{\"a\": 1}]}",
            "attrs[0] (a) has a value that is not a string",
        ),
    ];
    for (parent, uuid, text, _) in &cases {
        fs::create_dir_all(base.join(parent)).unwrap();
        fs::write(base.join(parent).join(uuid), text).unwrap();
    }
    fs::write(base.join("mdpy/not-a-uuid"), "{}").unwrap();
    // mdevctl's script directory is not a parent; dot files are temporaries.
    fs::create_dir_all(base.join("scripts.d/callouts")).unwrap();
    fs::write(base.join("mdpy/.editor.swp"), "junk").unwrap();
    let good = config("6018366c-f658-47a7-9ed3-4fe53a096533", MdevStart::Auto, &[]);
    write_config(&root, &good).unwrap();

    let scan = read_all(&root);
    assert_eq!(scan.configs, vec![good], "one bad file hides no good one");
    assert_eq!(scan.errors.len(), cases.len() + 1, "{:?}", scan.errors);
    for (parent, uuid, _, why) in &cases {
        let path = base.join(parent).join(uuid);
        let err = scan
            .errors
            .iter()
            .find(|e| matches!(e, MdevctlError::Malformed { path: p, .. } if *p == path))
            .unwrap_or_else(|| panic!("no error for {}", path.display()));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("mdevctl config {} is malformed: ", path.display())),
            "{text}"
        );
        assert!(text.contains(why), "{text} lacks {why}");
    }
    assert!(scan.errors.iter().any(|e| matches!(
        e,
        MdevctlError::BadFileName { path } if path.ends_with("mdpy/not-a-uuid")
    )));
}

#[test]
fn unsafe_parent_names_are_refused_before_any_io() {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    for bad in ["", ".", "..", "a/b", "../../etc", "x\ny"] {
        let mut c = config(U1, MdevStart::Auto, &[]);
        c.parent = bad.into();
        assert!(
            matches!(
                write_config(&root, &c),
                Err(MdevctlError::BadParentName { .. })
            ),
            "{bad:?}"
        );
        assert!(parse_config(Path::new("f"), bad, c.uuid, &c.to_json()).is_err());
    }
    assert!(!dir.path().join("etc").exists());
}

#[test]
fn import_records_mdevctl_ownership_and_export_writes_only_gpuvirts() {
    let mut ledger = Ledger::default();
    let ours: Uuid = U2.parse().unwrap();
    ledger.mdevs.insert(
        ours,
        MdevRecord {
            parent: "0000:41:00.0".into(),
            type_id: "nvidia-300".into(),
            start: MdevStart::Auto,
            attrs: vec![("k".into(), "v".into())],
            rule: Some("vdi".into()),
            defined: true,
            created_by_gpuvirt: true,
        },
    );
    let theirs = config(U1, MdevStart::Manual, &[("a", "1")]);
    let our_export = config(U2, MdevStart::Auto, &[]);
    let report = import(&mut ledger, &[theirs.clone(), our_export]);
    assert_eq!(report.imported, vec![theirs.uuid]);
    assert_eq!(report.kept_gpuvirt, vec![ours]);
    assert_eq!(owner_of(&theirs.uuid, &ledger, &[]), Owner::Mdevctl);
    assert_eq!(owner_of(&ours, &ledger, &[]), Owner::Gpuvirt);
    let stranger: Uuid = "6018366c-f658-47a7-9ed3-4fe53a096533".parse().unwrap();
    assert_eq!(owner_of(&stranger, &ledger, &[]), Owner::Other);
    assert_eq!(
        owner_of(
            &stranger,
            &Ledger::default(),
            &[config(&stranger.to_string(), MdevStart::Auto, &[])]
        ),
        Owner::Mdevctl
    );
    // gpuvirt's record survived the import, attrs and all, and is all that is exported.
    assert!(ledger.mdevs[&ours].created_by_gpuvirt);
    let exported = export(&ledger);
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0].uuid, ours);
    assert_eq!(exported[0].attrs, vec![("k".to_string(), "v".to_string())]);
    assert_eq!(
        exported[0].to_json(),
        "{\n  \"mdev_type\": \"nvidia-300\",\n  \"start\": \"auto\",\n  \"attrs\": [\n    {\n      \"k\": \"v\"\n    }\n  ]\n}"
    );
}

#[test]
fn definitions_merge_the_ledger_and_mdevctl_files_with_owners() {
    const U3: &str = "6018366c-f658-47a7-9ed3-4fe53a096533";
    let record = |gpuvirt: bool, defined: bool, start: MdevStart| MdevRecord {
        parent: "0000:41:00.0".into(),
        type_id: "nvidia-300".into(),
        start,
        attrs: vec![("z".into(), "1".into()), ("a".into(), "2".into())],
        rule: None,
        defined,
        created_by_gpuvirt: gpuvirt,
    };
    let mut ledger = Ledger::default();
    // gpuvirt's own, manual, with ordered attrs; an mdevctl import that a file now shadows;
    // a transient mdev gpuvirt created (not a definition).
    ledger
        .mdevs
        .insert(U2.parse().unwrap(), record(true, true, MdevStart::Manual));
    ledger
        .mdevs
        .insert(U1.parse().unwrap(), record(false, true, MdevStart::Auto));
    ledger
        .mdevs
        .insert(U3.parse().unwrap(), record(true, false, MdevStart::Auto));
    let file = config(U1, MdevStart::Manual, &[("x", "y")]);
    let mut other_parent = config(U3, MdevStart::Auto, &[]);
    other_parent.parent = "mbochs".into();
    let active: Uuid = U2.parse().unwrap();
    let defs = definitions(&ledger, &[file.clone(), other_parent.clone()], |u, _| {
        *u == active
    });
    let shown: Vec<(String, &str, &str, bool)> = defs
        .iter()
        .map(|d| {
            (
                d.config.uuid.to_string(),
                d.config.parent.as_str(),
                d.owner.as_str(),
                d.active,
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (U2.to_string(), "0000:41:00.0", "gpuvirt", true),
            (U1.to_string(), "0000:41:00.0", "mdevctl", false),
            (U3.to_string(), "mbochs", "mdevctl", false),
        ]
    );
    // The file, not the stale import, describes mdevctl's definition.
    assert_eq!(defs[1].config, file);
    assert_eq!(defs[0].config.start, MdevStart::Manual);
    assert_eq!(
        defs[0].config.attrs,
        vec![
            ("z".to_string(), "1".to_string()),
            ("a".to_string(), "2".to_string())
        ]
    );
    // A file naming one of gpuvirt's own UUIDs is listed beside it: mdevctl acts on it too.
    let twin = config(U2, MdevStart::Auto, &[]);
    let defs = definitions(&ledger, &[twin], |_, _| false);
    let owners: Vec<&str> = defs.iter().map(|d| d.owner.as_str()).collect();
    assert_eq!(owners, vec!["gpuvirt", "mdevctl", "mdevctl"]);
}

#[test]
fn dumpjson_documents_round_trip_and_single_files_need_parent_and_uuid() {
    let a = config(U1, MdevStart::Manual, &[("z", "1"), ("a", "2")]);
    let mut b = config(U2, MdevStart::Auto, &[]);
    b.parent = "mbochs".into();
    let c = config(U2, MdevStart::Auto, &[]);
    let text = dump_json(&[b.clone(), a.clone(), c.clone()]);
    // Parents sorted, each parent's UUIDs sorted, mdevctl's key order inside.
    let expected = format!(
        "[\n  {{\n    \"0000:41:00.0\": [\n      {{\n        \"{U2}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"auto\",\n          \"attrs\": []\n        }}\n      }},\n      {{\n        \"{U1}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"manual\",\n          \"attrs\": [\n            {{\n              \"z\": \"1\"\n            }},\n            {{\n              \"a\": \"2\"\n            }}\n          ]\n        }}\n      }}\n    ],\n    \"mbochs\": [\n      {{\n        \"{U2}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"auto\",\n          \"attrs\": []\n        }}\n      }}\n    ]\n  }}\n]"
    );
    assert_eq!(text, expected);
    let src = Path::new("dump.json");
    let back = parse_document(src, &text, None, None).unwrap();
    assert_eq!(back, vec![c.clone(), a.clone(), b.clone()]);
    // Parent and UUID select from a document.
    let only = parse_document(src, &text, Some("mbochs"), None).unwrap();
    assert_eq!(only, vec![b]);
    let only = parse_document(src, &text, None, Some(U1.parse().unwrap())).unwrap();
    assert_eq!(only, vec![a.clone()]);
    // One definition: parent and UUID must come from outside.
    let single = a.to_json();
    let e = parse_document(src, &single, None, Some(a.uuid)).unwrap_err();
    assert!(e.to_string().contains("does not name its parent"), "{e}");
    let e = parse_document(src, &single, Some("0000:41:00.0"), None).unwrap_err();
    assert!(e.to_string().contains("does not name its UUID"), "{e}");
    assert_eq!(
        parse_document(src, &single, Some("0000:41:00.0"), Some(a.uuid)).unwrap(),
        vec![a]
    );
    // Malformed documents name the place.
    let e = parse_document(src, r#"[{"p": [{"not-a-uuid": {}}]}]"#, None, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("(\"not-a-uuid\" under p): the key is not a UUID"),
        "{e}"
    );
    let e = parse_document(src, r#"[{"p": {}}]"#, None, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("entry [0][\"p\"] (parent p) is not a list"),
        "{e}"
    );
    let e = parse_document(
        src,
        &format!(r#"[{{"p": [{{"{U1}": {{"start": "auto"}}}}]}}]"#),
        None,
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("mdev_type is missing"), "{e}");
}

fn defined(parent: &str, start: MdevStart) -> MdevRecord {
    MdevRecord {
        parent: parent.into(),
        type_id: "nvidia-300".into(),
        start,
        attrs: Vec::new(),
        rule: None,
        defined: true,
        created_by_gpuvirt: true,
    }
}

/// One UUID under two parents (mdevctl allows it): both kept, listed and exported; a request
/// without a parent is refused naming both; starting one makes it the record the executor
/// keeps; undefining one leaves the other. Older ledgers read and write the same bytes.
#[test]
fn one_uuid_defined_under_two_parents() {
    use gpuvirt_core::mdevctl::{
        add_definition, make_primary, pick_definition, remove_definition, PickError,
    };
    let u: Uuid = U1.parse().unwrap();
    let (a, b) = ("0000:41:00.0", "0000:61:00.0");
    let mut ledger = Ledger::default();
    let before = serde_json::to_string_pretty(&ledger).unwrap();
    assert!(!before.contains("more_mdev_definitions"), "{before}");
    add_definition(&mut ledger, u, defined(a, MdevStart::Auto));
    add_definition(&mut ledger, u, defined(b, MdevStart::Manual));
    assert_eq!(ledger.mdevs[&u].parent, a);
    assert_eq!(ledger.more_mdev_definitions[&u].len(), 1);

    let e = pick_definition(&ledger, &u, None).unwrap_err();
    assert!(matches!(e, PickError::Ambiguous { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "mdev {U1} is defined under 2 parents ({a}, {b}); say which with the parent option"
        )
    );
    assert_eq!(
        pick_definition(&ledger, &u, Some(b))
            .unwrap()
            .unwrap()
            .parent,
        b
    );
    let e = pick_definition(&ledger, &u, Some("mbochs")).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "not defined under mbochs; it is defined under {a}, {b}"
        )),
        "{e}"
    );
    assert_eq!(
        pick_definition(&ledger, &U2.parse().unwrap(), None),
        Ok(None)
    );

    let exported = export(&ledger);
    assert_eq!(
        exported
            .iter()
            .map(|c| c.parent.as_str())
            .collect::<Vec<_>>(),
        [a, b]
    );
    let text = dump_json(&exported);
    assert_eq!(text.matches(U1).count(), 2, "{text}");
    assert_eq!(
        parse_document(Path::new("d"), &text, None, None).unwrap(),
        exported
    );
    let defs = definitions(&ledger, &[], |_, p| p == a);
    let shown: Vec<(&str, bool)> = defs
        .iter()
        .map(|d| (d.config.parent.as_str(), d.active))
        .collect();
    assert_eq!(shown, [(a, true), (b, false)]);

    // The ledger round trips with both, and without them is what it was.
    let text = serde_json::to_string(&ledger).unwrap();
    assert_eq!(serde_json::from_str::<Ledger>(&text).unwrap(), ledger);

    make_primary(&mut ledger, u, b);
    assert_eq!(ledger.mdevs[&u].start, MdevStart::Manual);
    assert_eq!(ledger.more_mdev_definitions[&u][0].parent, a);
    // Undefining the active one keeps its record, undefined; the other stays defined.
    remove_definition(&mut ledger, u, b, true);
    assert!(!ledger.mdevs[&u].defined);
    assert_eq!(
        pick_definition(&ledger, &u, None).unwrap().unwrap().parent,
        a
    );
    // Undefining the last one leaves only the transient record.
    remove_definition(&mut ledger, u, a, true);
    assert!(ledger.more_mdev_definitions.is_empty());
    assert_eq!(pick_definition(&ledger, &u, None), Ok(None));
    // An inactive primary that is undefined gives its place to the other parent's definition.
    let mut ledger = Ledger::default();
    add_definition(&mut ledger, u, defined(a, MdevStart::Auto));
    add_definition(&mut ledger, u, defined(b, MdevStart::Manual));
    remove_definition(&mut ledger, u, a, false);
    assert_eq!(ledger.mdevs[&u].parent, b);
    assert!(ledger.more_mdev_definitions.is_empty());
    remove_definition(&mut ledger, u, b, false);
    assert_eq!(ledger, Ledger::default());
    assert_eq!(serde_json::to_string_pretty(&ledger).unwrap(), before);
}

/// `mdevctl --version` as (major, minor), when mdevctl is installed and may be run against a
/// directory bound over `/etc/mdevctl.d` in a private mount namespace (root, util-linux).
fn real_mdevctl() -> Option<(u32, u32)> {
    let out = std::process::Command::new("mdevctl")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let v = (parts.next()??, parts.next()??);
    (nix_is_root() && Path::new("/etc/mdevctl.d").is_dir()).then_some(v)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// What the real mdevctl prints for `args` with `dir` as its `/etc/mdevctl.d` (bound over it
/// in a private mount namespace: the host's own directory is never written).
fn run_mdevctl(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/mdevctl.d && shift && exec mdevctl \"$@\"")
        .arg("sh")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

/// The real mdevctl (Debian's 1.2.0 here) reads the files gpuvirt writes for every valid
/// document of the gpuvirt-types corpus and prints, with `list --defined --dumpjson`, exactly
/// gpuvirt's [`dump_json`] of them, and with `-u UUID -p PARENT` exactly one file's contents;
/// mdevctl before 1.4 ends both with one newline (`println!`), which gpuvirt's export does not
/// (docs/cli.md says so). Skipped, saying so, where mdevctl cannot be run this way.
#[test]
fn the_real_mdevctl_prints_what_gpuvirt_writes() {
    let Some(version) = real_mdevctl() else {
        eprintln!("SKIP: mdevctl is not installed, or this is not root with /etc/mdevctl.d");
        return;
    };
    let newline = if version < (1, 4) { "\n" } else { "" };
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gpuvirt-types/tests/corpus");
    let mut compared = 0;
    for name in [
        "valid-empty",
        "valid-one-parent",
        "valid-multi-parent",
        "valid-virtual-parent",
    ] {
        let text = fs::read_to_string(corpus.join(format!("{name}.json"))).unwrap();
        let configs = parse_document(Path::new(name), &text, None, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        // mdevctl 1.2 insists on its scripts directories.
        for sub in ["scripts.d/callouts", "scripts.d/notifiers"] {
            fs::create_dir_all(dir.path().join("etc/mdevctl.d").join(sub)).unwrap();
        }
        for c in &configs {
            write_config(&root, c).unwrap();
        }
        let etc = dir.path().join("etc/mdevctl.d");
        let Some(listed) = run_mdevctl(&etc, &["list", "--defined", "--dumpjson"]) else {
            eprintln!("SKIP: mdevctl cannot be run in a private mount namespace here");
            return;
        };
        assert_eq!(
            listed,
            format!("{}{newline}", dump_json(&configs)),
            "{name}"
        );
        assert_eq!(
            dump_json(&configs),
            text,
            "{name}: the corpus is mdevctl's bytes"
        );
        for c in &configs {
            let uuid = c.uuid.to_string();
            let one = run_mdevctl(
                &etc,
                &[
                    "list",
                    "--defined",
                    "--dumpjson",
                    "-u",
                    &uuid,
                    "-p",
                    &c.parent,
                ],
            )
            .unwrap();
            assert_eq!(one, format!("{}{newline}", c.to_json()), "{name}: {uuid}");
        }
        compared += 1;
    }
    assert_eq!(compared, 4);
}
