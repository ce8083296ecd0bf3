//! Prints a host's inventory as pretty JSON.
//!
//! `cargo run -p gpuvirt-core --example inventory -- --root DIR [--stats] [--repeat N]`
//!
//! `--refresh-check` then refreshes every PCI function, mdev parent and mdev once (as a uevent
//! would), reports the mean cost of one refresh and checks the result equals the fresh scan.
//!
//! `--stats` reports on stderr the file operations of one scan, per PCI function and per mdev,
//! and the scan time (median of `--repeat` scans, default 1) so it can stand beside
//! `lspci -D -nn -k` and `mdevctl list` on the same tree.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gpuvirt_core::{Root, Scanner};

struct Args {
    root: String,
    stats: bool,
    repeat: usize,
    quiet: bool,
    refresh_check: bool,
}

const USAGE: &str =
    "usage: inventory --root DIR [--stats] [--repeat N] [--quiet] [--refresh-check]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        root: String::new(),
        stats: false,
        repeat: 1,
        quiet: false,
        refresh_check: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--root" => args.root = it.next().ok_or("--root needs a directory")?,
            "--stats" => args.stats = true,
            "--quiet" => args.quiet = true,
            "--refresh-check" => args.refresh_check = true,
            "--repeat" => {
                let n = it.next().ok_or("--repeat needs a count")?;
                args.repeat = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("--repeat: '{n}' is not a positive count"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if args.root.is_empty() {
        // The real host's root is never implied: the caller must say `--root /`.
        return Err(format!("--root is required\n{USAGE}"));
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let load_started = Instant::now();
    let scanner = Scanner::new(Root::new(&args.root));
    let load_time = load_started.elapsed();

    let mut times: Vec<Duration> = Vec::with_capacity(args.repeat);
    let mut result = None;
    for _ in 0..args.repeat {
        let started = Instant::now();
        let scanned = scanner.scan_with_stats();
        times.push(started.elapsed());
        result = Some(scanned);
    }
    let Some((inventory, stats)) = result else {
        return ExitCode::FAILURE;
    };

    if !args.quiet {
        match serde_json::to_string_pretty(&inventory) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("the inventory could not be serialised: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.stats {
        times.sort();
        let median = times[times.len() / 2];
        // Every PCI function of the host, not only those read in full (the GPU scope).
        let functions = inventory.pci_classes.len().max(1) as f64;
        let mdevs = inventory.mdevs.len();
        let report = serde_json::json!({
            "functions": inventory.pci_classes.len(),
            "functions_read_in_full": inventory.functions.len(),
            "gpus": inventory.gpus.len(),
            "iommu_groups": inventory.iommu.group_count,
            "iommu_groups_read": inventory.groups.len(),
            "mdev_parents": inventory.mdev_parents.len(),
            "mdev_types": inventory.mdev_parents.values().map(|p| p.types.len()).sum::<usize>(),
            "mdevs": mdevs,
            "warnings": inventory.warnings.len(),
            "scan": stats,
            "file_operations": stats.total(),
            "file_operations_per_function": stats.total() as f64 / functions,
            "database_load": scanner.load_stats(),
            "database_load_ms": load_time.as_secs_f64() * 1e3,
            "scan_ms_median": median.as_secs_f64() * 1e3,
            "scan_ms_min": times[0].as_secs_f64() * 1e3,
            "scan_ms_max": times[times.len() - 1].as_secs_f64() * 1e3,
            "runs": times.len(),
        });
        eprintln!("{report:#}");
    }
    if args.refresh_check {
        return refresh_check(&scanner, &inventory);
    }
    ExitCode::SUCCESS
}

/// Refreshes every device once and checks nothing drifted from the scan.
fn refresh_check(scanner: &Scanner, scanned: &gpuvirt_core::Inventory) -> ExitCode {
    use gpuvirt_core::{RefreshTarget, ScanStats};
    let mut targets: Vec<RefreshTarget> = scanned
        .pci_classes
        .keys()
        .map(|a| RefreshTarget::Pci(*a))
        .collect();
    targets.extend(
        scanned
            .mdev_parents
            .keys()
            .map(|n| RefreshTarget::MdevParent(n.clone())),
    );
    targets.extend(scanned.mdevs.keys().map(|u| RefreshTarget::Mdev(*u)));
    let mut inventory = scanned.clone();
    let mut total = ScanStats::default();
    let started = Instant::now();
    for target in &targets {
        total.add(&scanner.refresh_with_stats(&mut inventory, target));
    }
    let elapsed = started.elapsed();
    let n = targets.len().max(1) as f64;
    let same = inventory == *scanned;
    let report = serde_json::json!({
        "refreshes": targets.len(),
        "file_operations_per_refresh": total.total() as f64 / n,
        "us_per_refresh": elapsed.as_secs_f64() * 1e6 / n,
        "refreshed_equals_scan": same,
    });
    eprintln!("{report:#}");
    if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
