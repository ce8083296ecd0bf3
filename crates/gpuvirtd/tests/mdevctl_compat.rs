//! The mdevctl compatibility tier: the real mdevctl (Debian's 1.2.0, which has no root
//! option) runs in a private mount namespace with a simulated host's `sys` and an
//! `etc/mdevctl.d` bound over `/sys` and `/etc/mdevctl.d`, beside gpuvirtd and gpuvirtctl on
//! the same simulated host, and `types`, `list`, `list -d` (`-v`, `--dumpjson`, `-u -p`) must
//! print the same bytes, in both directions:
//!
//! 1. mdevctl's files: every document is defined with the real `mdevctl define --jsonfile`
//!    (and one definition with `mdevctl define -t` and `mdevctl modify --addattr --index`)
//!    into the simulated host's own `etc/mdevctl.d`, which gpuvirtd reads.
//! 2. gpuvirt's definitions: every document is imported with `gpuvirtctl mdev import
//!    --mdevctl` (and one defined and modified with gpuvirtctl's mdevctl verbs); the files
//!    `gpuvirtctl mdev export --mdevctl U -p P` prints are what mdevctl reads.
//!
//! Any byte difference fails with a diff of every view that differs. The tier prints how
//! many documents and hosts it compared. Without root, FUSE, unshare or mdevctl it says so
//! and passes, unless GPUVIRT_REQUIRE_MDEVCTL=1 (scripts/test.sh sets it when mdevctl is
//! installed). GPUVIRT_SKIP_MDEVCTL_COMPAT=1 skips it (the unit tier, which runs it as its
//! own step).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use gpuvirt_core::ledger::MdevStart;
use gpuvirt_core::mdevctl::{parse_config, parse_document, MdevctlConfig};
use uuid::Uuid;

/// The bundled hosts with mdev parents (PCI and virtual ones, active mdevs and mdevctl files).
const HOSTS: [&str; 3] = ["runbook", "mdev-server-8gpu", "vm-reference"];
/// The parent single-definition documents are defined under: present on no host.
const ABSENT: &str = "0000:99:00.0";

/// Why the real mdevctl cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        return Some("needs root and /dev/fuse".into());
    }
    match Command::new("mdevctl").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("mdevctl is not installed (apt-get install mdevctl)".into()),
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        return Some("unshare (util-linux) is not installed".into());
    }
    if !Path::new("/etc/mdevctl.d").is_dir() {
        return Some("/etc/mdevctl.d (mdevctl's package) is missing".into());
    }
    None
}

/// What the real mdevctl prints for `args`, with `sys` and `etc` bound over `/sys` and
/// `/etc/mdevctl.d` in a mount namespace of its own (the host's are never touched).
fn mdevctl(sys: &Path, etc: &Path, args: &[&str]) -> String {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" /sys && mount --bind \"$2\" /etc/mdevctl.d && shift 2 && \
             exec mdevctl \"$@\"",
        )
        .arg("sh")
        .arg(sys)
        .arg(etc)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mdevctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ctl(bus: &Bus, args: &[&str]) -> String {
    let out = Command::new(gpuvirtctl())
        .args(["--bus-address", &bus.address, "--no-ask-password", "mdev"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gpuvirtctl mdev {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents: the valid ones of gpuvirt-types' corpus (mdevctl's own bytes, including a
/// UUID under two parents, virtual parents, an unknown key, single files) and one per host on
/// its own parents and types.
fn corpus() -> Vec<(String, Vec<MdevctlConfig>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gpuvirt-types/tests/corpus");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("valid-") && n.ends_with(".json")
        })
        .collect();
    names.sort();
    let single: Uuid = "5d9c3e1a-7b2f-4c8d-9e0a-1f2b3c4d5e6f".parse().unwrap();
    names
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let configs = if gpuvirt_core::mdevctl::is_dumpjson(&text) {
                parse_document(&p, &text, None, None).unwrap()
            } else {
                vec![parse_config(&p, ABSENT, single, &text).unwrap()]
            };
            (name, configs)
        })
        .collect()
}

/// The host's mdev parents and their types, as its sysfs lists them, sorted.
fn parents_of(sys: &Path) -> Vec<(String, Vec<String>)> {
    let bus = sys.join("class/mdev_bus");
    let mut out: Vec<(String, Vec<String>)> = std::fs::read_dir(&bus)
        .map(|d| {
            d.map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let mut types: Vec<String> =
                    std::fs::read_dir(bus.join(&name).join("mdev_supported_types"))
                        .unwrap()
                        .map(|t| t.unwrap().file_name().to_string_lossy().into_owned())
                        .collect();
                types.sort();
                (name, types)
            })
            .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A document on the host's own parents: ordered attrs, both start modes, one UUID under two
/// parents. Its auto definition has no attrs, so gpuvirtd's start of it cannot fail on them.
fn host_document(parents: &[(String, Vec<String>)]) -> Vec<MdevctlConfig> {
    let uuid = |s: &str| s.parse::<Uuid>().unwrap();
    let mut doc = Vec::new();
    for (i, (parent, types)) in parents.iter().take(2).enumerate() {
        let t = types.last().cloned().unwrap_or_else(|| "none".into());
        let config = |u: &str, start, attrs: &[(&str, &str)]| MdevctlConfig {
            uuid: uuid(u),
            parent: parent.clone(),
            mdev_type: t.clone(),
            start,
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        doc.push(config(
            "0c1d2e3f-4a5b-4c6d-8e7f-000000000001",
            MdevStart::Manual,
            &[],
        ));
        if i == 0 {
            doc.push(config(
                "0c1d2e3f-4a5b-4c6d-8e7f-000000000002",
                MdevStart::Manual,
                &[("z_last", "1"), ("a_first", "two words"), ("z_last", "3")],
            ));
            doc.push(config(
                "0c1d2e3f-4a5b-4c6d-8e7f-000000000003",
                MdevStart::Auto,
                &[],
            ));
        }
    }
    doc
}

/// The views compared, as mdevctl's arguments; gpuvirtctl gets the same (bare `list` with
/// `--mdevctl`, its table being the bare form).
fn views(defined: &[(String, String)]) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = [
        &["types"][..],
        &["types", "--dumpjson"],
        &["list"],
        &["list", "-v"],
        &["list", "--dumpjson"],
        &["list", "-d"],
        &["list", "-d", "-v"],
        &["list", "-d", "--dumpjson"],
    ]
    .iter()
    .map(|a| a.iter().map(|s| s.to_string()).collect())
    .collect();
    for (uuid, parent) in defined {
        v.push(
            ["list", "-d", "--dumpjson", "-u", uuid, "-p", parent]
                .map(String::from)
                .to_vec(),
        );
    }
    v
}

/// `mdevctl --version` (it reads no device state).
fn version() -> String {
    let out = Command::new("mdevctl").arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `diff -u` of the two outputs.
fn diff(mdevctl: &str, gpuvirt: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("mdevctl"), dir.path().join("gpuvirtctl"));
    std::fs::write(&a, mdevctl).unwrap();
    std::fs::write(&b, gpuvirt).unwrap();
    let out = Command::new("diff")
        .arg("-u")
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Tally {
    documents: BTreeSet<String>,
    hosts: BTreeSet<String>,
    compared: usize,
    failures: Vec<String>,
}

impl Tally {
    /// Compares every view on one host and definition set; a difference is recorded with
    /// its diff.
    fn compare(&mut self, what: &str, bus: &Bus, sys: &Path, etc: &Path) {
        // The definitions to look at one by one, from mdevctl's own listing.
        let listed = mdevctl(sys, etc, &["list", "-d"]);
        let defined: Vec<(String, String)> = listed
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                Some((f.next()?.to_owned(), f.next()?.to_owned()))
            })
            .collect();
        for args in views(&defined) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let theirs = mdevctl(sys, etc, &args);
            // The very same command line: `gpuvirtctl mdev` in place of `mdevctl`.
            let ours = ctl(bus, &args);
            self.compared += 1;
            if theirs != ours {
                self.failures.push(format!(
                    "{what}: `mdevctl {}` and `gpuvirtctl mdev {}` differ:\n{}",
                    args.join(" "),
                    args.join(" "),
                    diff(&theirs, &ours)
                ));
            }
        }
    }
}

/// gpuvirtctl's mdevctl listing once it stops changing (an auto definition gpuvirtd starts
/// after the import answered).
fn settle(bus: &Bus) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = ctl(bus, &["list", "-d", "--dumpjson"]) + &ctl(bus, &["list"]);
    loop {
        std::thread::sleep(Duration::from_millis(150));
        let now = ctl(bus, &["list", "-d", "--dumpjson"]) + &ctl(bus, &["list"]);
        if now == last || Instant::now() > deadline {
            return;
        }
        last = now;
    }
}

/// mdevctl 1.2 refuses to run without its scripts directories.
fn scripts_dirs(etc: &Path) {
    for sub in ["scripts.d/callouts", "scripts.d/notifiers"] {
        std::fs::create_dir_all(etc.join(sub)).unwrap();
    }
}

/// Direction 1: the real mdevctl writes the document's files; gpuvirt reads them.
async fn mdevctl_writes(tally: &mut Tally, host_name: &str, name: &str, doc: &[MdevctlConfig]) {
    let host = SimHost::boot(host_name);
    let (sys, etc) = (host.root().join("sys"), host.root().join("etc/mdevctl.d"));
    scripts_dirs(&etc);
    let bus = Bus::start();
    let events = format!("sim:{}", host.socket.display());
    let _daemon = Daemon::start(&bus, host.root(), &events, host.dir.path()).await;
    let scratch = tempfile::tempdir().unwrap();
    for c in doc {
        let file = scratch.path().join("def.json");
        std::fs::write(&file, c.to_json()).unwrap();
        let uuid = c.uuid.to_string();
        let jsonfile = file.to_str().unwrap();
        mdevctl(
            &sys,
            &etc,
            &[
                "define",
                "-p",
                &c.parent,
                "-u",
                &uuid,
                "--jsonfile",
                jsonfile,
            ],
        );
    }
    if name.starts_with("host-") {
        // mdevctl's other writers: define by type, modify with an index.
        if let Some((parent, types)) = parents_of(&sys).first() {
            let u = "0c1d2e3f-4a5b-4c6d-8e7f-0000000000aa";
            let t = types.first().cloned().unwrap_or_default();
            mdevctl(&sys, &etc, &["define", "-p", parent, "-t", &t, "-u", u]);
            for (attr, index) in [("first", None), ("second", Some("0"))] {
                let mut args = vec!["modify", "-u", u, "--addattr", attr, "--value", "v"];
                if let Some(i) = index {
                    args.extend(["--index", i]);
                }
                mdevctl(&sys, &etc, &args);
            }
        }
    }
    tally.compare(
        &format!("{host_name}, {name}, mdevctl's files"),
        &bus,
        &sys,
        &etc,
    );
}

/// Direction 2: gpuvirt defines the document; mdevctl reads the files gpuvirt exports (and
/// the host's own mdevctl files).
async fn gpuvirt_writes(tally: &mut Tally, host_name: &str, name: &str, doc: &[MdevctlConfig]) {
    let host = SimHost::boot(host_name);
    let sys = host.root().join("sys");
    scripts_dirs(&host.root().join("etc/mdevctl.d"));
    let bus = Bus::start();
    let events = format!("sim:{}", host.socket.display());
    let _daemon = Daemon::start(&bus, host.root(), &events, host.dir.path()).await;
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("doc.json");
    std::fs::write(&file, gpuvirt_core::mdevctl::dump_json(doc)).unwrap();
    ctl(&bus, &["import", "--mdevctl", file.to_str().unwrap()]);
    if name.starts_with("host-") {
        if let Some((parent, types)) = parents_of(&sys).first() {
            let u = "0c1d2e3f-4a5b-4c6d-8e7f-0000000000bb";
            let t = types.first().cloned().unwrap_or_default();
            ctl(&bus, &["define", "-p", parent, "-t", &t, "-u", u]);
            ctl(
                &bus,
                &["modify", "-u", u, "--addattr", "first", "--value", "v"],
            );
            ctl(
                &bus,
                &[
                    "modify",
                    "-u",
                    u,
                    "--addattr",
                    "second",
                    "--value",
                    "v",
                    "--index",
                    "0",
                ],
            );
        }
    }
    settle(&bus);
    // mdevctl's directory: the host's own files and one file per definition gpuvirt exports.
    let etc = scratch.path().join("mdevctl.d");
    scripts_dirs(&etc);
    let listed = ctl(&bus, &["list", "-d", "--dumpjson"]);
    let defined = parse_document(Path::new("listed"), listed.trim_end(), None, None).unwrap();
    for c in &defined {
        let uuid = c.uuid.to_string();
        let bytes = ctl(&bus, &["export", "--mdevctl", &uuid, "-p", &c.parent]);
        std::fs::create_dir_all(etc.join(&c.parent)).unwrap();
        std::fs::write(etc.join(&c.parent).join(&uuid), bytes).unwrap();
    }
    tally.compare(
        &format!("{host_name}, {name}, gpuvirt's exports"),
        &bus,
        &sys,
        &etc,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdevctl_and_gpuvirt_print_the_same_bytes() {
    if std::env::var_os("GPUVIRT_SKIP_MDEVCTL_COMPAT").is_some() {
        eprintln!("SKIP: GPUVIRT_SKIP_MDEVCTL_COMPAT is set (the tier runs on its own)");
        return;
    }
    if let Some(why) = unavailable() {
        assert!(
            std::env::var_os("GPUVIRT_REQUIRE_MDEVCTL").is_none(),
            "GPUVIRT_REQUIRE_MDEVCTL is set but the real mdevctl cannot run: {why}"
        );
        eprintln!("SKIP: {why}");
        return;
    }
    let started = Instant::now();
    let mut tally = Tally {
        documents: BTreeSet::new(),
        hosts: BTreeSet::new(),
        compared: 0,
        failures: Vec::new(),
    };
    let corpus = corpus();
    for host_name in HOSTS {
        // The host's own parents decide which documents gpuvirt may define: a type it does
        // not offer is refused on a present parent (mdevctl does not check).
        let parents = {
            let probe = SimHost::boot(host_name);
            parents_of(&probe.root().join("sys"))
        };
        let present: BTreeSet<&str> = parents.iter().map(|(p, _)| p.as_str()).collect();
        let mut docs: Vec<(String, Vec<MdevctlConfig>)> = corpus.clone();
        docs.push((format!("host-{host_name}"), host_document(&parents)));
        for (name, doc) in &docs {
            mdevctl_writes(&mut tally, host_name, name, doc).await;
            let own = name.starts_with("host-");
            if own || doc.iter().all(|c| !present.contains(c.parent.as_str())) {
                gpuvirt_writes(&mut tally, host_name, name, doc).await;
            }
            tally.documents.insert(name.clone());
        }
        tally.hosts.insert(host_name.to_owned());
    }
    println!(
        "mdevctl compatibility: {} documents on {} hosts ({}), {} views compared byte for byte \
         against {} in {:.1}s",
        tally.documents.len(),
        tally.hosts.len(),
        tally.hosts.iter().cloned().collect::<Vec<_>>().join(", "),
        tally.compared,
        version(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {} views differ between mdevctl and gpuvirt:\n\n{}",
        tally.failures.len(),
        tally.compared,
        tally.failures.join("\n")
    );
}
