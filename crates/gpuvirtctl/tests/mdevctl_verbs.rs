//! mdevctl's command line on `gpuvirtctl mdev`: the runbook's lines verbatim (`types`,
//! `define --parent P --type T`, `start --parent P --uuid U`, `list -d`), mdevctl's output
//! shapes, and `modify` (attributes at an index, the last deleted, start mode, a JSON file,
//! dry runs) with its refusals changing nothing. The byte-for-byte comparison with the real
//! mdevctl is gpuvirtd's `tests/mdevctl_compat.rs`.

#![allow(clippy::unwrap_used)]

#[path = "golden_support/mod.rs"]
mod support;

use support::*;

const P: &str = "0000:41:00.0";
const U: &str = "b2e1c4a6-3f0d-4d7e-9a51-6c2f8e0d1a33";

fn ok(bus: &Bus, args: &[&str]) -> String {
    let out = ctl(bus, args);
    assert_eq!(
        code(&out),
        0,
        "gpuvirtctl {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn refused(bus: &Bus, args: &[&str], says: &str) {
    let out = ctl(bus, args);
    assert_eq!(code(&out), 1, "gpuvirtctl {args:?}: {}", stderr(&out));
    assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
}

fn mdev_exists(host: &SimHost, uuid: &str) -> bool {
    host.root()
        .join(format!("sys/bus/mdev/devices/{uuid}"))
        .exists()
}

#[test]
fn the_runbooks_mdevctl_lines_work_verbatim() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);

    let types = ok(&bus, &["mdev", "types"]);
    assert!(types.starts_with(&format!("{P}\n  nvidia-212\n    Available instances: ")));
    assert!(types.contains("  nvidia-300\n    Available instances: 2\n    Device API: vfio-pci\n    Name: GRID V100-8C\n"), "{types}");
    assert!(
        types.ends_with("\n\n"),
        "mdevctl's println! after the last line"
    );

    // mdevctl's define: manual, and the generated UUID printed.
    let mut uuids = Vec::new();
    for _ in 0..2 {
        let u = ok(
            &bus,
            &["mdev", "define", "--parent", P, "--type", "nvidia-300"],
        );
        let u = u.trim().to_owned();
        assert_eq!(u.len(), 36, "{u}");
        assert!(
            !mdev_exists(&host, &u),
            "mdevctl's define does not start it"
        );
        uuids.push(u);
    }
    for u in &uuids {
        assert_eq!(ok(&bus, &["mdev", "start", "--parent", P, "--uuid", u]), "");
        assert!(mdev_exists(&host, u));
    }
    uuids.sort();
    let expected: String = uuids
        .iter()
        .map(|u| format!("{u} {P} nvidia-300 manual (active)\n"))
        .collect();
    assert_eq!(ok(&bus, &["mdev", "list", "-d"]), format!("{expected}\n"));
    let active: String = uuids
        .iter()
        .map(|u| format!("{u} {P} nvidia-300 manual (defined)\n"))
        .collect();
    assert_eq!(ok(&bus, &["mdev", "list"]), format!("{active}\n"));
    // -d and --defined are one flag, as in mdevctl.
    assert_eq!(
        ok(&bus, &["mdev", "list", "--defined"]),
        format!("{expected}\n")
    );
    // gpuvirtctl's own table on request.
    assert!(ok(&bus, &["mdev", "list", "--table"]).starts_with("UUID"));
    assert!(ok(&bus, &["mdev", "list", "--defined", "--table"]).starts_with("UUID"));
    // One device's JSON, as its file holds it, with mdevctl 1.2's newline.
    assert_eq!(
        ok(&bus, &["mdev", "list", "-d", "--dumpjson", "-u", &uuids[0]]),
        "{\n  \"mdev_type\": \"nvidia-300\",\n  \"start\": \"manual\",\n  \"attrs\": []\n}\n"
    );
    // With a UUID given, define prints nothing (as mdevctl); stop and undefine by flag.
    assert_eq!(
        ok(
            &bus,
            &["mdev", "define", "-p", P, "-t", "nvidia-300", "-u", U]
        ),
        ""
    );
    ok(&bus, &["mdev", "stop", "-u", &uuids[0]]);
    assert!(!mdev_exists(&host, &uuids[0]));
    ok(&bus, &["mdev", "undefine", "-u", &uuids[0]]);
    // A transient device by parent and type prints its UUID.
    let t = ok(&bus, &["mdev", "start", "-p", P, "-t", "nvidia-300"]);
    assert!(mdev_exists(&host, t.trim()), "{t}");
    let listed = ok(&bus, &["mdev", "list", "-u", t.trim()]);
    assert_eq!(listed, format!("{} {P} nvidia-300 manual\n\n", t.trim()));
}

#[test]
fn modify_changes_definitions_as_mdevctl_does_and_refusals_change_nothing() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    ok(
        &bus,
        &["mdev", "define", "-p", P, "-t", "nvidia-300", "-u", U],
    );
    ok(
        &bus,
        &["mdev", "modify", "-u", U, "--addattr", "a", "--value", "1"],
    );
    ok(
        &bus,
        &[
            "mdev",
            "modify",
            "-u",
            U,
            "--addattr",
            "b",
            "--value",
            "2",
            "--index",
            "0",
        ],
    );
    ok(
        &bus,
        &["mdev", "modify", "-u", U, "--addattr", "c", "--value", "3"],
    );
    let export = || ok(&bus, &["mdev", "export", "--mdevctl", U]);
    let three = export();
    assert_eq!(
        three,
        "{\n  \"mdev_type\": \"nvidia-300\",\n  \"start\": \"manual\",\n  \"attrs\": [\n    {\n      \"b\": \"2\"\n    },\n    {\n      \"a\": \"1\"\n    },\n    {\n      \"c\": \"3\"\n    }\n  ]\n}"
    );
    assert_eq!(
        ok(&bus, &["mdev", "list", "-d", "-v"]),
        format!("{U} {P} nvidia-300 manual\n  Attrs:\n    @{{0}}: {{\"b\":\"2\"}}\n    @{{1}}: {{\"a\":\"1\"}}\n    @{{2}}: {{\"c\":\"3\"}}\n\n")
    );

    // Refusals name the problem and change nothing.
    let cases: &[(&[&str], &str)] = &[
        (
            &["--delattr", "--index", "3"],
            "attribute index 3 is out of range",
        ),
        (
            &["--addattr", "x", "--value", "1", "--index", "4"],
            "attribute index 4 is out of range",
        ),
        (
            &["--addattr", "../remove", "--value", "1"],
            "not a sysfs file name",
        ),
        (&["--auto", "--live"], "not supported"),
        (&["-t", "nvidia-999"], "nvidia-999"),
        (&[], "nothing to change"),
    ];
    for (args, says) in cases {
        let mut all = vec!["mdev", "modify", "-u", U];
        all.extend_from_slice(args);
        refused(&bus, &all, says);
        assert_eq!(export(), three, "{args:?} changed the definition");
    }
    refused(
        &bus,
        &[
            "mdev",
            "modify",
            "-u",
            "c3f2d5b7-4a1e-4e8f-8b62-7d309f1e2b44",
            "--auto",
        ],
        "no mdev c3f2d5b7-4a1e-4e8f-8b62-7d309f1e2b44 is defined",
    );

    // --delattr without an index drops the last; --index the one there.
    ok(&bus, &["mdev", "modify", "-u", U, "--delattr"]);
    ok(
        &bus,
        &["mdev", "modify", "-u", U, "--delattr", "--index", "0"],
    );
    // A dry run prints what it would become and changes nothing.
    let dry = ok(
        &bus,
        &[
            "mdev",
            "modify",
            "-u",
            U,
            "--auto",
            "-t",
            "nvidia-301",
            "--dry-run",
        ],
    );
    assert_eq!(
        dry,
        "{\n  \"mdev_type\": \"nvidia-301\",\n  \"start\": \"auto\",\n  \"attrs\": [\n    {\n      \"a\": \"1\"\n    }\n  ]\n}\n"
    );
    assert!(export().contains("\"start\": \"manual\""));
    ok(
        &bus,
        &["mdev", "modify", "-u", U, "--auto", "-t", "nvidia-301"],
    );
    assert_eq!(export(), dry.trim_end());
    assert!(!mdev_exists(&host, U), "modify does not start a device");

    // A JSON file replaces the whole definition.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("def.json");
    std::fs::write(
        &file,
        "{\"mdev_type\": \"nvidia-300\", \"start\": \"manual\", \"attrs\": [{\"z\": \"9\"}]}",
    )
    .unwrap();
    ok(
        &bus,
        &[
            "mdev",
            "modify",
            "-u",
            U,
            "--jsonfile",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        ok(&bus, &["mdev", "list", "-d", "-v", "-u", U]),
        format!("{U} {P} nvidia-300 manual\n  Attrs:\n    @{{0}}: {{\"z\":\"9\"}}\n\n")
    );

    // mdevctl's own file is mdevctl's to change.
    let theirs = "6018366c-f658-47a7-9ed3-4fe53a096533";
    let dir = host.root().join("etc/mdevctl.d").join(P);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(theirs),
        "{\n  \"mdev_type\": \"nvidia-300\",\n  \"start\": \"manual\",\n  \"attrs\": []\n}",
    )
    .unwrap();
    refused(
        &bus,
        &["mdev", "modify", "-u", theirs, "--auto"],
        "mdevctl's definition",
    );
}
