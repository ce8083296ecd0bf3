//! The mutating commands end to end: gpuvirtctl against a live gpuvirtd on a private bus and a
//! FUSE-simulated host. Checks what the user sees (stdout, plain-word errors, exit codes) and
//! what the kernel ended up with (the simulated sysfs).

#![allow(clippy::unwrap_used)]

#[path = "golden_support/mod.rs"]
mod support;

use std::path::PathBuf;

use support::*;

const UUID: &str = "b2e1c4a6-3f0d-4d7e-9a51-6c2f8e0d1a33";
const UUID2: &str = "c3f2d5b7-4a1e-4e8f-8b62-7d309f1e2b44";

fn driver_of(host: &SimHost, address: &str) -> String {
    std::fs::read_link(
        host.root()
            .join(format!("sys/bus/pci/devices/{address}/driver")),
    )
    .ok()
    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    .unwrap_or_default()
}

fn mdev_exists(host: &SimHost, uuid: &str) -> bool {
    host.root()
        .join(format!("sys/bus/mdev/devices/{uuid}"))
        .exists()
}

/// Loads a module in the simulated kernel (the sim has no modprobe binary to run).
fn load_module(host: &SimHost, module: &str) {
    let mount = &host.mount;
    gpuvirt_sim::fuse::lock_backend(mount.backend())
        .load_module(module)
        .unwrap();
    mount.publish_pending();
}

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

#[test]
fn passthrough_and_return_on_the_workstation() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("workstation");
    load_module(&host, "vfio_pci");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    let card = "0000:01:00.0";
    let before = driver_of(&host, card);
    assert_ne!(before, "vfio-pci");

    // Dry run: a plan, nothing changes.
    let plan = ok(&bus, &["passthrough", card, "--dry-run"]);
    assert!(plan.contains("vfio-pci"), "{plan}");
    assert_eq!(driver_of(&host, card), before);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&bus, &["passthrough", card, "--dry-run", "--json"])).unwrap();
    assert_eq!(json["job"], serde_json::Value::Null);
    assert_eq!(json["dry_run"], true);

    // The real thing waits for the job and reports its end.
    let out = ok(&bus, &["passthrough", card]);
    assert!(out.contains("done:"), "{out}");
    assert!(
        !out.contains("done: done:"),
        "the prefix is said once: {out}"
    );
    assert_eq!(driver_of(&host, card), "vfio-pci");

    // Again: nothing to do, no job.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&bus, &["passthrough", card, "--json"])).unwrap();
    assert_eq!(json["job"], serde_json::Value::Null, "{json}");

    let out = ctl(&bus, &["return", card, "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["job"]["success"], true, "{json}");
    assert_eq!(driver_of(&host, card), before);
}

#[test]
fn boot_vga_is_refused_in_plain_words() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("workstation");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    let out = ctl(&bus, &["passthrough", "0000:00:02.0"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("this is the GPU the host boots and displays on"),
        "{err}"
    );
    assert!(err.contains("give the host another display"), "{err}");
    assert_eq!(driver_of(&host, "0000:00:02.0"), "i915");
    // Unknown device: exit 1 with the advice, not a raw D-Bus error.
    let out = ctl(&bus, &["passthrough", "0000:99:00.0"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no such device"), "{}", stderr(&out));
}

#[test]
fn mdev_create_list_remove_on_the_runbook_host() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    let created = ok(
        &bus,
        &[
            "mdev",
            "create",
            "0000:41:00.0",
            "nvidia-300",
            "--uuid",
            UUID,
        ],
    );
    assert_eq!(created.trim(), UUID);
    assert!(mdev_exists(&host, UUID));
    // Without --uuid the daemon picks one; the short address works too.
    let fresh = ok(&bus, &["mdev", "create", "41:00.0", "nvidia-300"]);
    let fresh = fresh.trim().to_owned();
    assert_eq!(fresh.len(), 36, "{fresh}");
    assert!(mdev_exists(&host, &fresh));

    let list = ok(&bus, &["mdev", "list", "--table"]);
    assert!(list.starts_with("UUID"), "{list}");
    for uuid in [UUID, fresh.as_str()] {
        let line = list.lines().find(|l| l.contains(uuid)).unwrap();
        assert!(
            line.contains("0000:41:00.0") && line.contains("nvidia-300") && line.contains("active"),
            "{line}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&bus, &["mdev", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    let export: serde_json::Value =
        serde_json::from_str(&ok(&bus, &["mdev", "export", "--mdevctl", UUID])).unwrap();
    assert_eq!(
        export,
        serde_json::json!({"mdev_type": "nvidia-300", "start": "manual", "attrs": []})
    );

    // Full: the type offers two instances.
    let out = ctl(&bus, &["mdev", "create", "0000:41:00.0", "nvidia-300"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("no instances of that vGPU type are left"),
        "{}",
        stderr(&out)
    );

    ok(&bus, &["mdev", "remove", UUID]);
    assert!(!mdev_exists(&host, UUID));
    let list = ok(&bus, &["mdev", "list", "--table"]);
    assert!(!list.contains(UUID) && list.contains(&fresh), "{list}");
    let out = ctl(&bus, &["mdev", "remove", UUID]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("no such device"), "{}", stderr(&out));
}

#[test]
fn mdev_define_start_stop_undefine() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    let defined = ok(
        &bus,
        &[
            "mdev",
            "define",
            "0000:41:00.0",
            "nvidia-300",
            "--uuid",
            UUID2,
            "--manual",
        ],
    );
    assert_eq!(defined.trim(), UUID2);
    // Manual: defined but not created.
    assert!(!mdev_exists(&host, UUID2));
    let again = ctl(
        &bus,
        &[
            "mdev",
            "define",
            "0000:41:00.0",
            "nvidia-300",
            "--uuid",
            UUID2,
        ],
    );
    assert_eq!(code(&again), 1);
    ok(&bus, &["mdev", "start", UUID2]);
    assert!(mdev_exists(&host, UUID2));
    ok(&bus, &["mdev", "stop", UUID2]);
    assert!(!mdev_exists(&host, UUID2));
    ok(&bus, &["mdev", "undefine", UUID2]);
    let out = ctl(&bus, &["mdev", "start", UUID2]);
    assert_eq!(code(&out), 1, "a dropped definition cannot start");
    // Auto (the default) starts at once on a present parent.
    ok(
        &bus,
        &[
            "mdev",
            "define",
            "0000:41:00.0",
            "nvidia-300",
            "--uuid",
            UUID,
        ],
    );
    assert!(mdev_exists(&host, UUID));
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/mutate")
        .join(name)
}

fn check_golden(name: &str, actual: &str) {
    let file = golden(name);
    if std::env::var_os("GPUVIRT_BLESS").is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (GPUVIRT_BLESS=1 writes it)",
            file.display()
        )
    });
    assert_eq!(
        expected,
        actual,
        "{} differs (GPUVIRT_BLESS=1 accepts)",
        file.display()
    );
}

#[test]
fn xml_and_qemu_args_golden() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    host.write(
        "sys/bus/pci/devices/0000:41:00.0/mdev_supported_types/nvidia-300/create",
        UUID,
    )
    .unwrap();
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    check_golden("runbook-card.xml", &ok(&bus, &["xml", "0000:41:00.0"]));
    check_golden(
        "runbook-card.args",
        &ok(&bus, &["qemu-args", "0000:41:00.0"]),
    );
    // x-vga needs a VGA-class card; the V100 is a 3D controller.
    let out = ctl(&bus, &["xml", "0000:41:00.0", "--x-vga"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("x-vga"), "{}", stderr(&out));
    // Bad options are refused before the target is looked at, naming the option.
    for (args, option) in [
        (
            &["qemu-args", "0000:41:00.0", "--guest-slot", "3"][..],
            "guest-slot",
        ),
        (
            &[
                "xml",
                "0000:99:00.0",
                "--qemu-bus",
                "rp1",
                "--guest-slot",
                "40",
            ][..],
            "guest-slot",
        ),
        (
            &["xml", "0000:99:00.0", "--guest-bus", "256"][..],
            "guest-bus",
        ),
        (&["xml", "0000:99:00.0", "--qemu-bus", "1"][..], "qemu-bus"),
        (&["xml", UUID, "--managed", "yes"][..], "managed"),
        (&["xml", "0000:41:00.0", "--display", "on"][..], "display"),
    ] {
        let out = ctl(&bus, args);
        assert_eq!(code(&out), 1, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("option '{option}'")),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    check_golden("runbook-mdev.xml", &ok(&bus, &["xml", UUID]));
    check_golden("runbook-mdev.args", &ok(&bus, &["qemu-args", UUID]));
    let out = ctl(&bus, &["xml", "not-a-target"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("an argument is not valid"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn doctor_runbook_passes_nic_shared_group_fails() {
    if !fuse_available() {
        return;
    }
    {
        let host = SimHost::boot("runbook");
        load_module(&host, "vfio_pci");
        let bus = Bus::start();
        let _daemon = Daemon::start(&bus, &host, true);
        let out = ctl(&bus, &["doctor"]);
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("ok   iommu: IOMMU enabled"), "{text}");
        assert!(text.contains("ok   gpu 0000:41:00.0"), "{text}");
        check_golden("doctor-runbook.txt", &text);
    }
    let host = SimHost::boot("nic-shared-group");
    load_module(&host, "vfio_pci");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    let out = ctl(&bus, &["doctor"]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("FAIL gpu 0000:03:00.0"), "{text}");
    assert!(text.contains("move the card"), "{text}");
    assert!(stderr(&out).contains("block"), "{}", stderr(&out));
    check_golden("doctor-nic-shared-group.txt", &text);
    let out = ctl(&bus, &["doctor", "--json"]);
    assert_eq!(code(&out), 1);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["passthrough_possible"], false);
    // Each problem names its group once (it says "shares IOMMU group 12" itself).
    let out = ctl(&bus, &["groups"]);
    let text = stdout(&out);
    assert!(!text.contains("group 12: "), "{text}");
    check_golden("groups-nic-shared-group.txt", &text);
}

/// `mdev import --mdevctl` then `mdev export --mdevctl` gives back mdevctl's JSON unchanged:
/// a file from `mdevctl.d` (parent and UUID from its path, ordered attrs, manual) and a
/// `mdevctl list --dumpjson` document (auto); `mdev list --defined` shows start and owner.
#[test]
fn mdev_import_export_round_trips_mdevctl_json() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().join("0000:41:00.0");
    std::fs::create_dir_all(&dir).unwrap();
    // As mdevctl writes it: keys in its order, two-space indent, no trailing newline.
    let manual = "{\n  \"mdev_type\": \"nvidia-300\",\n  \"start\": \"manual\",\n  \"attrs\": [\n    {\n      \"z\": \"1\"\n    },\n    {\n      \"a\": \"2\"\n    },\n    {\n      \"z\": \"3\"\n    }\n  ]\n}";
    let file = dir.join(UUID);
    std::fs::write(&file, manual).unwrap();
    let out = ok(
        &bus,
        &["mdev", "import", "--mdevctl", file.to_str().unwrap()],
    );
    assert_eq!(out.trim(), UUID);
    assert!(!mdev_exists(&host, UUID), "manual: defined, not started");
    // The file's bytes exactly: no trailing newline, as mdevctl writes its files.
    assert_eq!(ok(&bus, &["mdev", "export", "--mdevctl", UUID]), manual);

    // The dumpjson form names parent and UUID itself.
    let dump = format!(
        "[\n  {{\n    \"0000:41:00.0\": [\n      {{\n        \"{UUID2}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"auto\",\n          \"attrs\": []\n        }}\n      }}\n    ]\n  }}\n]"
    );
    let dump_file = files.path().join("dump.json");
    std::fs::write(&dump_file, &dump).unwrap();
    let out = ok(
        &bus,
        &["mdev", "import", "--mdevctl", dump_file.to_str().unwrap()],
    );
    assert_eq!(out.trim(), UUID2);
    assert!(mdev_exists(&host, UUID2), "auto: started at once");
    assert_eq!(
        ok(&bus, &["mdev", "export", "--mdevctl", UUID2]),
        "{\n  \"mdev_type\": \"nvidia-300\",\n  \"start\": \"auto\",\n  \"attrs\": []\n}"
    );
    // Everything at once, as `mdevctl list --dumpjson` prints it (UUID sorts before UUID2).
    let all = ok(&bus, &["mdev", "export", "--mdevctl"]);
    let indented: String = manual
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_owned()
            } else {
                format!("\n        {l}")
            }
        })
        .collect();
    assert_eq!(
        all,
        format!(
            "[\n  {{\n    \"0000:41:00.0\": [\n      {{\n        \"{UUID}\": {indented}\n      }},\n      {{\n        \"{UUID2}\": {{\n          \"mdev_type\": \"nvidia-300\",\n          \"start\": \"auto\",\n          \"attrs\": []\n        }}\n      }}\n    ]\n  }}\n]"
        )
    );

    let table = ok(&bus, &["mdev", "list", "--defined", "--table"]);
    let header = table.lines().next().unwrap();
    for column in ["UUID", "PARENT", "TYPE", "START", "OWNER", "STATE"] {
        assert!(header.contains(column), "{table}");
    }
    let row = |u: &str| table.lines().find(|l| l.contains(u)).unwrap().to_owned();
    let words = |l: String| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        words(row(UUID)),
        [
            UUID,
            "0000:41:00.0",
            "nvidia-300",
            "manual",
            "gpuvirt",
            "inactive"
        ]
    );
    assert_eq!(
        words(row(UUID2)),
        [
            UUID2,
            "0000:41:00.0",
            "nvidia-300",
            "auto",
            "gpuvirt",
            "active"
        ]
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&bus, &["mdev", "list", "--defined", "--json"])).unwrap();
    assert_eq!(
        json[0],
        serde_json::json!({"uuid": UUID, "parent": "0000:41:00.0", "type": "nvidia-300",
            "owner": "gpuvirt", "start": "manual",
            "attrs": [{"z": "1"}, {"a": "2"}, {"z": "3"}], "active": false})
    );

    // A malformed file is refused in plain words, naming it; nothing is defined.
    let broken = dir.join("c0ffee00-3f1c-4b7a-9b4d-3f2f3a1e8c02");
    std::fs::write(&broken, "{\"start\": \"auto\"}").unwrap();
    let out = ctl(
        &bus,
        &["mdev", "import", "--mdevctl", broken.to_str().unwrap()],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("mdev_type is missing"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        ok(&bus, &["mdev", "list", "--defined", "--json"])
            .matches("\"uuid\"")
            .count(),
        2
    );
}

/// The corpus of gpuvirt-types, `NAME.json`.
fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../gpuvirt-types/tests/corpus/{name}.json"))
}

/// mdevctl's documents through the CLI: an empty host exports `[]` exactly and imports it
/// as nothing to do; a file named `invalid-uuid-value` is refused for its name; a UUID under
/// two parents imports whole, is listed and exported under both (whole export and the
/// UUID's), and `start`/`undefine` need `-p`; export gives back mdevctl's bytes.
#[test]
fn mdev_import_export_of_empty_multi_parent_and_misnamed_documents() {
    if !fuse_available() {
        return;
    }
    let host = SimHost::boot("runbook");
    let bus = Bus::start();
    let _daemon = Daemon::start(&bus, &host, true);
    // An empty host: `[]`, byte for byte, and importing it back is nothing to do.
    assert_eq!(ok(&bus, &["mdev", "export", "--mdevctl"]), "[]");
    let empty = corpus("valid-empty");
    assert_eq!(
        ok(
            &bus,
            &["mdev", "import", "--mdevctl", empty.to_str().unwrap()]
        ),
        ""
    );
    assert_eq!(ok(&bus, &["mdev", "export", "--mdevctl"]), "[]");

    // A file in a parent's directory whose name is not a UUID: the name is the problem.
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().join("0000:41:00.0");
    std::fs::create_dir_all(&dir).unwrap();
    let misnamed = dir.join("invalid-uuid-value");
    std::fs::copy(corpus("valid-single-file"), &misnamed).unwrap();
    let out = ctl(
        &bus,
        &["mdev", "import", "--mdevctl", misnamed.to_str().unwrap()],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the file name is not a UUID"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("parent must be given"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ok(&bus, &["mdev", "export", "--mdevctl"]), "[]");

    // A refused document defines nothing, however late its bad entry.
    let late = corpus("bad-late-entry");
    let out = ctl(
        &bus,
        &["mdev", "import", "--mdevctl", late.to_str().unwrap()],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("entry [0][\"0000:61:00.0\"][5]"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ok(&bus, &["mdev", "export", "--mdevctl"]), "[]");

    // One UUID under two parents (absent ones: their types are ids), as mdevctl writes it.
    let multi = corpus("valid-multi-parent");
    let text = std::fs::read_to_string(&multi).unwrap();
    let out = ok(
        &bus,
        &["mdev", "import", "--mdevctl", multi.to_str().unwrap()],
    );
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(ok(&bus, &["mdev", "export", "--mdevctl"]), text);
    let twice = "7c2e5d4f-1c80-4f3b-8d72-3a9e1f5c8b21";
    let table = ok(&bus, &["mdev", "list", "--defined", "--table"]);
    assert_eq!(
        table.lines().filter(|l| l.contains(twice)).count(),
        2,
        "{table}"
    );
    // The UUID's own export holds both, as `mdevctl list --dumpjson -u` prints them; -p one.
    let both = ok(&bus, &["mdev", "export", "--mdevctl", twice]);
    assert!(
        both.starts_with('[') && both.matches(twice).count() == 2,
        "{both}"
    );
    assert!(
        both.contains("0000:00:02.0") && both.contains("0000:00:03.0"),
        "{both}"
    );
    let one = ok(
        &bus,
        &["mdev", "export", "--mdevctl", twice, "-p", "0000:00:03.0"],
    );
    assert!(
        one.starts_with("{\n  \"mdev_type\": \"vfio_ap-passthrough\""),
        "{one}"
    );
    assert!(!one.ends_with('\n'));
    // Start and undefine must be told which parent.
    for verb in ["start", "undefine"] {
        let out = ctl(&bus, &["mdev", verb, twice]);
        assert_eq!(code(&out), 1, "{verb}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("defined under 2 parents (0000:00:02.0, 0000:00:03.0)"),
            "{verb}: {}",
            stderr(&out)
        );
    }
    ok(
        &bus,
        &["mdev", "undefine", "--parent", "0000:00:03.0", twice],
    );
    let table = ok(&bus, &["mdev", "list", "--defined", "--table"]);
    assert_eq!(
        table.lines().filter(|l| l.contains(twice)).count(),
        1,
        "{table}"
    );
    ok(&bus, &["mdev", "undefine", twice]);
    assert_eq!(
        ok(&bus, &["mdev", "list", "--defined", "--json"])
            .matches("\"uuid\"")
            .count(),
        1
    );
}
