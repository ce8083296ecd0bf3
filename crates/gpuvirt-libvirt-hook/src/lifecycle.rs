//! What the hook does at each libvirt operation: `prepare` checks every hostdev gpuvirt knows,
//! then readies them (starts defined vGPUs, assigns on-demand cards), undoing its own steps
//! when a later one fails; `release` undoes what the record says this hook did.
//! May import: crate::bus, crate::domain, crate::record, crate::error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use gpuvirt_api as api;
use tokio::time::Instant;

use crate::bus::Daemon;
use crate::domain::{Hostdevs, PciHostdev};
use crate::error::HookError;
use crate::record::{self, Record};

/// One change `prepare` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    StartMdev { uuid: String, parent: String },
    AssignCard { path: String, address: String },
}

/// A line on stderr, which libvirtd passes on to its log (and shows when a start fails).
pub fn say(domain: &str, text: &str) {
    eprintln!("gpuvirt-libvirt-hook: {domain}: {text}");
}

/// What gpuvirtd knows of one card: its Gpu object, the functions of its slot and their
/// drivers.
#[derive(Debug)]
struct Card<'a> {
    path: String,
    gpu: &'a api::GpuProps,
    drivers: HashMap<String, String>,
}

/// Every GPU function gpuvirtd serves (the GPU's own and its companions'), mapped to its card.
fn cards(objects: &api::Objects) -> HashMap<String, Card<'_>> {
    let groups: HashMap<&str, &api::IommuGroupProps> = objects
        .0
        .iter()
        .filter_map(|(p, i)| i.iommu_group.as_deref().map(|g| (p.as_str(), g)))
        .collect();
    let mut out = HashMap::new();
    for (path, ifaces) in &objects.0 {
        let Some(gpu) = ifaces.gpu.as_deref() else {
            continue;
        };
        let mut drivers = HashMap::new();
        if let Some(group) = groups.get(gpu.iommu_group.as_str()) {
            for (name, _, driver) in &group.members {
                drivers.insert(name.clone(), driver.clone());
            }
        }
        drivers.insert(gpu.pci_address.clone(), gpu.driver.clone());
        for function in std::iter::once(&gpu.pci_address).chain(&gpu.companions) {
            out.entry(function.clone()).or_insert_with(|| Card {
                path: path.to_string(),
                gpu,
                drivers: drivers.clone(),
            });
        }
    }
    out
}

/// Checks the domain's mdevs: the defined, inactive ones to start (with their parents), after
/// checking their parents have room; unknown UUIDs are libvirt's business.
fn mdev_steps(
    uuids: &[String],
    definitions: &[api::MdevDefinitionWire],
    active: &[String],
    objects: &api::Objects,
    refusals: &mut Vec<String>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    // (parent, type) -> how many this domain needs started.
    let mut needed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for uuid in uuids {
        if active.contains(uuid) {
            continue;
        }
        let defs: Vec<&api::MdevDefinitionWire> = definitions
            .iter()
            .filter(|d| d.0.eq_ignore_ascii_case(uuid))
            .collect();
        match defs.as_slice() {
            [] => {}
            [def] => {
                needed
                    .entry((def.1.clone(), def.2.clone()))
                    .or_default()
                    .push(uuid.clone());
                steps.push(Step::StartMdev {
                    uuid: uuid.clone(),
                    parent: def.1.clone(),
                });
            }
            many => {
                let parents: Vec<&str> = many.iter().map(|d| d.1.as_str()).collect();
                refusals.push(format!(
                    "vGPU {uuid} is defined under several parents ({}); gpuvirt cannot tell \
                     which one the domain means: undefine the others (gpuvirtctl mdev undefine \
                     -u {uuid} -p PARENT)",
                    parents.join(", ")
                ));
            }
        }
    }
    let parents: HashMap<&str, &api::ShardParentProps> = objects
        .0
        .iter()
        .filter_map(|(_, i)| i.shard_parent.as_deref())
        .map(|p| (p.name.as_str(), p))
        .collect();
    for ((parent, mdev_type), uuids) in &needed {
        let Some(p) = parents.get(parent.as_str()) else {
            refusals.push(format!(
                "vGPU {} cannot start: its parent {parent} is not present",
                uuids.join(", ")
            ));
            continue;
        };
        let (name, available) = p
            .types
            .get(mdev_type)
            .map_or((String::new(), 0), |t| (t.0.clone(), t.3));
        if (uuids.len() as u64) > u64::from(available) {
            let named = if name.is_empty() {
                mdev_type.clone()
            } else {
                format!("{mdev_type} ({name})")
            };
            refusals.push(format!(
                "no capacity for vGPU {}: {parent} has {available} instance(s) of {named} \
                 left and this domain needs {}",
                uuids.join(", "),
                uuids.len()
            ));
        }
    }
    steps
}

/// Why a card that is not on vfio-pci is not the hook's to move, or `None` when libvirt
/// should be left to deal with it.
fn card_refusal(card: &Card<'_>, functions: &[&PciHostdev], off_vfio: &[String]) -> Option<String> {
    let address = &card.gpu.pci_address;
    let rule = &card.gpu.policy_rule;
    let bound = off_vfio.join(", ");
    match card.gpu.role.as_str() {
        // No policy says anything of the card: libvirt's managed='yes' detaches it itself.
        "" | "unmanaged" if functions.iter().all(|f| f.managed) => None,
        "" | "unmanaged" => Some(format!(
            "{address} is not on vfio-pci ({bound}) and gpuvirt's policy leaves it unmanaged, \
             so the hook does not move it: give it a passthrough rule with on_demand = true \
             (docs/libvirt-hook.md), assign it first (gpuvirtctl passthrough {address}), or \
             use managed='yes'"
        )),
        "passthrough" => Some(format!(
            "{address} is not on vfio-pci ({bound}) although policy rule {rule:?} passes it \
             through: the policy is not applied (see gpuvirtctl policy plan); the hook moves \
             only cards whose rule says on_demand = true"
        )),
        role => Some(format!(
            "{address} is managed by policy rule {rule:?} (role {role}): the host keeps it, \
             so no VM may take it; change the rule (e.g. role = \"passthrough\" with \
             on_demand = true) and reload the policy"
        )),
    }
}

/// Checks the domain's PCI hostdevs; the cards to assign (on-demand ones) are checked with a
/// dry run, which names boot-VGA, IOMMU-group and holder problems.
async fn pci_steps(
    daemon: &Daemon,
    pci: &[PciHostdev],
    objects: &api::Objects,
    refusals: &mut Vec<String>,
) -> Result<Vec<Step>, HookError> {
    let known = cards(objects);
    // Card path -> the domain's functions of it, in document order.
    let mut by_card: Vec<(&Card<'_>, Vec<&PciHostdev>)> = Vec::new();
    for hostdev in pci {
        let Some(card) = known.get(&hostdev.address) else {
            continue;
        };
        match by_card.iter_mut().find(|(c, _)| c.path == card.path) {
            Some((_, fs)) => fs.push(hostdev),
            None => by_card.push((card, vec![hostdev])),
        }
    }
    let mut steps = Vec::new();
    for (card, functions) in by_card {
        let off_vfio: Vec<String> = functions
            .iter()
            .filter_map(|f| {
                let driver = card.drivers.get(&f.address).map_or("", String::as_str);
                (driver != "vfio-pci").then(|| {
                    let d = if driver.is_empty() {
                        "no driver"
                    } else {
                        driver
                    };
                    format!("{} on {d}", f.address)
                })
            })
            .collect();
        if off_vfio.is_empty() {
            continue;
        }
        let address = card.gpu.pci_address.clone();
        // The card's passthrough rule says on_demand = true (gpuvirtd then allows
        // AssignPassthrough and ReturnToHost on it).
        if card.gpu.on_demand {
            match daemon.assign(&card.path, &address, true).await {
                Ok(()) => steps.push(Step::AssignCard {
                    path: card.path.clone(),
                    address,
                }),
                Err(HookError::Call { message, .. }) => {
                    refusals.push(format!("{address} cannot be passed through: {message}"))
                }
                Err(other) => return Err(other),
            }
        } else if let Some(why) = card_refusal(card, &functions, &off_vfio) {
            refusals.push(why);
        }
    }
    Ok(steps)
}

/// `prepare begin` (and `restore`/`migrate begin`): checks the whole domain, then makes each
/// change, recording it; on a failure (or the deadline) it undoes this run's changes, with
/// `undo_deadline` as their limit, and fails.
pub async fn prepare(
    daemon: &mut Daemon,
    domain: &str,
    hostdevs: &Hostdevs,
    state_dir: &Path,
    undo_deadline: Instant,
) -> Result<(), HookError> {
    let (definitions, active) = if hostdevs.mdevs.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (
            daemon.mdev_definitions().await?,
            daemon.active_mdevs().await?,
        )
    };
    let objects = daemon.objects().await?;
    let mut refusals = Vec::new();
    let mut steps = mdev_steps(
        &hostdevs.mdevs,
        &definitions,
        &active,
        &objects,
        &mut refusals,
    );
    steps.extend(pci_steps(daemon, &hostdevs.pci, &objects, &mut refusals).await?);
    if !refusals.is_empty() {
        return Err(HookError::Refused(format!(
            "domain {domain} cannot start:\n  {}",
            refusals.join("\n  ")
        )));
    }
    let mut rec = record::load(state_dir, domain)?.unwrap_or_else(|| Record {
        domain: domain.to_owned(),
        ..Record::default()
    });
    let mut done: Vec<Step> = Vec::new();
    for step in steps {
        let result = match &step {
            Step::StartMdev { uuid, parent } => daemon.start_mdev(uuid, parent).await.map(|()| {
                rec.started_mdevs.push(uuid.clone());
            }),
            Step::AssignCard { path, address } => {
                // Recorded first: a job that outlives the deadline may still finish, and
                // then release must return the card.
                rec.assigned_cards.push(address.clone());
                record::store(state_dir, &rec)?;
                daemon.assign(path, address, false).await
            }
        };
        if let Err(e) = result {
            daemon.set_deadline(undo_deadline);
            let undone = undo(daemon, domain, &done, &step, &mut rec, &objects).await;
            record::store(state_dir, &rec)?;
            return Err(HookError::Refused(format!(
                "domain {domain} cannot start: {e}{undone}"
            )));
        }
        record::store(state_dir, &rec)?;
        let what = match &step {
            Step::StartMdev { uuid, .. } => format!("started vGPU {uuid}"),
            Step::AssignCard { address, .. } => format!("assigned {address} to vfio-pci"),
        };
        say(domain, &what);
        done.push(step);
    }
    Ok(())
}

/// Undoes `done` (newest first) and the `failed` step's record entry; returns a sentence
/// for the error message.
async fn undo(
    daemon: &Daemon,
    domain: &str,
    done: &[Step],
    failed: &Step,
    rec: &mut Record,
    objects: &api::Objects,
) -> String {
    let mut undone = Vec::new();
    let mut left = Vec::new();
    let mut all: Vec<&Step> = done.iter().collect();
    if matches!(failed, Step::AssignCard { .. }) {
        all.push(failed);
    }
    for step in all.into_iter().rev() {
        let (result, what) = match step {
            Step::StartMdev { uuid, .. } => (daemon.stop_mdev(uuid).await, format!("vGPU {uuid}")),
            Step::AssignCard { address, .. } => {
                (return_card(daemon, objects, address).await, address.clone())
            }
        };
        match result {
            Ok(()) => {
                forget(rec, step);
                if step != failed {
                    undone.push(what);
                }
            }
            Err(e) => {
                say(domain, &format!("could not undo {what}: {e}"));
                left.push(what);
            }
        }
    }
    let mut text = String::new();
    if !undone.is_empty() {
        text.push_str(&format!("; undid {}", undone.join(", ")));
    }
    if !left.is_empty() {
        text.push_str(&format!(
            "; could not undo {} (kept in the hook's record: the domain's release retries)",
            left.join(", ")
        ));
    }
    text
}

fn forget(rec: &mut Record, step: &Step) {
    match step {
        Step::StartMdev { uuid, .. } => rec.started_mdevs.retain(|u| u != uuid),
        Step::AssignCard { address, .. } => rec.assigned_cards.retain(|a| a != address),
    }
}

/// ReturnToHost on the card whose GPU is at `address`.
async fn return_card(
    daemon: &Daemon,
    objects: &api::Objects,
    address: &str,
) -> Result<(), HookError> {
    let path = objects
        .0
        .iter()
        .find(|(_, i)| i.gpu.as_deref().is_some_and(|g| g.pci_address == address))
        .map(|(p, _)| p.to_string())
        .ok_or_else(|| HookError::Refused(format!("{address} is no longer present")))?;
    daemon.return_to_host(&path, address).await
}

/// `release end`: undoes what the record of `domain` says (cards returned, then vGPUs
/// stopped); what cannot be undone now stays in the record for the next release.
pub async fn release(daemon: &Daemon, domain: &str, state_dir: &Path) -> Result<(), HookError> {
    let Some(mut rec) = record::load(state_dir, domain)? else {
        return Ok(());
    };
    let objects = if rec.assigned_cards.is_empty() {
        api::Objects::default()
    } else {
        daemon.objects().await?
    };
    let mut failures = Vec::new();
    for address in rec.assigned_cards.clone().iter().rev() {
        match return_card(daemon, &objects, address).await {
            Ok(()) => {
                rec.assigned_cards.retain(|a| a != address);
                say(domain, &format!("returned {address} to the host"));
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let active = if rec.started_mdevs.is_empty() {
        Vec::new()
    } else {
        daemon.active_mdevs().await?
    };
    for uuid in rec.started_mdevs.clone().iter().rev() {
        // One that is gone already (stopped by hand, its parent unloaded) is done.
        let result = if active.contains(uuid) {
            daemon.stop_mdev(uuid).await
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                rec.started_mdevs.retain(|u| u != uuid);
                say(domain, &format!("stopped vGPU {uuid}"));
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    record::store(state_dir, &rec)?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(HookError::Refused(format!(
            "could not undo everything for domain {domain} (kept in {}): {}",
            record::path(state_dir, domain).display(),
            failures.join("; ")
        )))
    }
}
