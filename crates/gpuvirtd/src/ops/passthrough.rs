//! Passthrough (`Gpu.AssignPassthrough`, `Gpu.ReturnToHost`): a whole slot to vfio-pci and
//! back. The run is a job (an unbind can hang on real hardware), which the bus edge exports;
//! this file checks, and runs once the job holds the lock. One ledger read and one actor
//! trip per call: the actor answers from its live inventory with just the slot's view.
//! May import: ops/runner.rs, ops/options.rs, crate::actor, crate::policy, crate::auth,
//! crate::error, crate::events, crate::ledger.

use std::collections::{BTreeSet, HashMap};

use gpuvirt_core::interlock::{self, Allowances, Facts};
use gpuvirt_core::ledger::SlotState;
use gpuvirt_core::plan::{Action, SlotFunction, SlotReturn};
use gpuvirt_core::render;
use gpuvirt_core::{Inventory, PciAddress, PciSlot};

use super::options::Options;
use super::runner::{plan_text, run_actions, InFlight, Runner};
use crate::auth::{Grant, Method};
use crate::error::{ErrorKind, OpError};
use crate::events::Target;
use crate::ledger::{ExecGuard, Snapshot};
use crate::policy::ManualSubject;

/// The card's functions (VFs excluded) and their drivers, its groups, and whether vfio-pci is
/// loaded.
#[derive(Debug)]
struct Card {
    functions: Vec<(PciAddress, Option<String>)>,
    groups: Vec<u32>,
    vfio_pci_loaded: bool,
}

fn slot_targets(card: &Card) -> Vec<Target> {
    let mut targets: Vec<Target> = card
        .functions
        .iter()
        .map(|(a, _)| Target::Pci(*a))
        .collect();
    targets.extend(card.groups.iter().map(|g| Target::IommuGroup(*g)));
    targets.push(Target::Modules);
    targets
}

/// The slot of `address` as the inventory shows it.
fn card_of(inv: &Inventory, address: PciAddress) -> Result<Card, OpError> {
    let functions = render::card_functions(inv, address)
        .map_err(|e| OpError::new(ErrorKind::NoSuchDevice, e.to_string()))?;
    let mut groups: Vec<u32> = functions.iter().filter_map(|f| f.iommu_group).collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(Card {
        functions: functions
            .into_iter()
            .map(|f| (f.address, f.driver.clone()))
            .collect(),
        groups,
        vfio_pci_loaded: inv.modules.vfio_pci,
    })
}

/// The part of `inv` the interlocks read about `slot`: its functions, their IOMMU groups
/// with every member's function, the IOMMU status and the modules (not the whole inventory,
/// which is large on a big host).
fn slot_view(inv: &Inventory, slot: PciSlot) -> Inventory {
    let mut view = Inventory {
        iommu: inv.iommu.clone(),
        modules: inv.modules,
        ..Inventory::default()
    };
    let first = PciAddress::new(slot.domain, slot.bus, slot.device, 0);
    let mut groups = BTreeSet::new();
    for (address, f) in inv.functions.range(first..) {
        if address.slot() != slot {
            break;
        }
        groups.extend(f.iommu_group);
        view.functions.insert(*address, f.clone());
    }
    for g in groups {
        let Some(group) = inv.groups.get(&g) else {
            continue;
        };
        for member in group.members.iter().filter_map(|m| m.pci_address) {
            if let Some(f) = inv.functions.get(&member) {
                view.functions.insert(member, f.clone());
            }
        }
        view.groups.insert(g, group.clone());
    }
    view
}

/// One trip to the actor: the policy's verdict, a read of the slot as sysfs has it now, and
/// the card with its view; then the interlock facts, which read /proc, off the actor's task.
async fn card_and_facts(
    runner: &Runner,
    address: PciAddress,
    snapshot: &Snapshot,
) -> Result<(Card, Facts, Inventory), OpError> {
    let slot = address.slot();
    let (card, view) = runner
        .actor()
        .check(
            vec![ManualSubject::Slot(address)],
            snapshot.ledger().original_drivers(),
            Some(Box::new(move |inv| {
                card_of(inv, address)
                    .map(|c| slot_targets(&c))
                    .unwrap_or_default()
            })),
            move |inv| card_of(inv, address).map(|card| (card, slot_view(inv, slot))),
        )
        .await??;
    let root = runner.door().root().clone();
    let (facts, view) = tokio::task::spawn_blocking(move || {
        let facts = Facts::gather(&root, &view, slot);
        (facts, view)
    })
    .await
    .map_err(|e| OpError::failed(format!("reading the holders failed: {e}")))?;
    Ok((card, facts, view))
}

fn parse_address(address: &str) -> Result<PciAddress, OpError> {
    address
        .parse()
        .map_err(|e| OpError::invalid_arg("address", e))
}

/// A checked slot operation: what the job will run, once authorised.
#[derive(Debug)]
pub struct PreparedSlot {
    method: Method,
    operation: String,
    address: PciAddress,
    targets: Vec<Target>,
    actions: Vec<Action>,
    snapshot: Snapshot,
    plan: String,
}

/// A slot operation's answer after its checks: at once (a no-op or a dry run: the text), or
/// the operation to commit.
#[derive(Debug)]
pub enum SlotOutcome {
    Answered(String),
    Commit(Box<PreparedSlot>),
}

/// `Gpu.AssignPassthrough(a{sv}) -> (o job, s plan)`.
pub async fn prepare_assign(
    runner: &Runner,
    address: &str,
    opts: Options,
) -> Result<SlotOutcome, OpError> {
    let address = parse_address(address)?;
    let slot = address.slot();
    let snapshot = runner.snapshot()?;
    let (card, facts, view) = card_and_facts(runner, address, &snapshot).await?;
    let all_vfio = card
        .functions
        .iter()
        .all(|(_, d)| d.as_deref() == Some("vfio-pci"));
    if all_vfio && snapshot.ledger().slot(slot).is_some() {
        return Ok(SlotOutcome::Answered(format!(
            "nothing to do: slot {slot} is assigned to vfio-pci already\n"
        )));
    }
    interlock::check_passthrough(&view, slot, &facts, Allowances::default())
        .map_err(|r| OpError::from_refusals(&r))?;
    let mut actions = Vec::new();
    if !card.vfio_pci_loaded {
        actions.push(Action::LoadModule {
            module: "vfio-pci".to_string(),
        });
    }
    actions.push(Action::BindSlotToVfio {
        slot,
        functions: card
            .functions
            .iter()
            .map(|(a, d)| SlotFunction {
                address: *a,
                driver: d.clone(),
            })
            .collect(),
    });
    Ok(prepared(
        Method::AssignPassthrough,
        format!("assign slot {slot} to vfio-pci"),
        address,
        &card,
        actions,
        snapshot,
        opts,
    ))
}

/// `Gpu.ReturnToHost(a{sv}) -> (o job, s plan)`.
pub async fn prepare_return(
    runner: &Runner,
    address: &str,
    opts: Options,
) -> Result<SlotOutcome, OpError> {
    let address = parse_address(address)?;
    let slot: PciSlot = address.slot();
    let snapshot = runner.snapshot()?;
    let (card, facts, _view) = card_and_facts(runner, address, &snapshot).await?;
    let ledger = snapshot.ledger();
    let any_vfio = card
        .functions
        .iter()
        .any(|(_, d)| d.as_deref() == Some("vfio-pci"));
    if ledger.slot(slot).is_none() && !any_vfio {
        return Ok(SlotOutcome::Answered(format!(
            "nothing to do: slot {slot} is with the host already\n"
        )));
    }
    // A removed record (the card left while passed through) is judged against the card that
    // came back by the daemon's ledger follower; until then, a card with no function on
    // vfio-pci has nothing to return, dry run or not.
    if ledger
        .slot(slot)
        .is_some_and(|r| r.state == SlotState::Removed)
        && !any_vfio
    {
        return Ok(SlotOutcome::Answered(format!(
            "nothing to do: slot {slot} was removed while passed through, and the card in it \
             now is with the host ({})\n",
            bound_text(&card)
        )));
    }
    // A card removed while passed through and back in its slot (a new device: no
    // driver_override, probed by its host driver) is judged by what it is bound to now: with
    // every function on a host driver there is nothing to return. The ledger's record of it
    // is older than the card; a real ReturnToHost drops it (its driver_override writes find
    // nothing to clear, and no function is rebound).
    let stale = ledger.slot(slot).filter(|r| {
        r.state == SlotState::Assigned
            && !any_vfio
            && !card.functions.is_empty()
            && card.functions.iter().all(|(_, d)| d.is_some())
    });
    if stale.is_some() && opts.dry_run {
        return Ok(SlotOutcome::Answered(format!(
            "nothing to do: slot {slot} is with the host already ({}); gpuvirt's record of it \
             as assigned dates from before the card was removed, and ReturnToHost without \
             dry-run drops it\n",
            bound_text(&card)
        )));
    }
    interlock::check_return(ledger, slot, &facts).map_err(|r| OpError::from_refusals(&r))?;
    let record = ledger
        .slot(slot)
        .ok_or_else(|| OpError::failed("the ledger changed while checking"))?;
    let current: HashMap<PciAddress, Option<String>> = card.functions.iter().cloned().collect();
    let actions = vec![Action::ReturnSlotToHost {
        slot,
        functions: record
            .functions
            .iter()
            .map(|f| SlotReturn {
                address: f.address,
                driver: current.get(&f.address).cloned().flatten(),
                original_driver: f.original_driver.clone(),
            })
            .collect(),
    }];
    Ok(prepared(
        Method::ReturnToHost,
        format!("return slot {slot} to the host"),
        address,
        &card,
        actions,
        snapshot,
        opts,
    ))
}

/// Each function with the driver it is on now (`A on D`, `-` when unbound).
fn bound_text(card: &Card) -> String {
    let bound: Vec<String> = card
        .functions
        .iter()
        .map(|(a, d)| format!("{a} on {}", d.as_deref().unwrap_or("-")))
        .collect();
    bound.join(", ")
}

/// The shared end of AssignPassthrough and ReturnToHost: the plan text for a dry run, else
/// the operation to commit.
fn prepared(
    method: Method,
    operation: String,
    address: PciAddress,
    card: &Card,
    actions: Vec<Action>,
    snapshot: Snapshot,
    opts: Options,
) -> SlotOutcome {
    let plan = plan_text(&actions);
    if opts.dry_run {
        return SlotOutcome::Answered(plan);
    }
    SlotOutcome::Commit(Box::new(PreparedSlot {
        method,
        operation,
        address,
        targets: slot_targets(card),
        actions,
        snapshot,
        plan,
    }))
}

impl PreparedSlot {
    /// The method whose authorization commits it.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Claims the slot; `grant` proves the caller may. The job then waits for the lock.
    pub fn commit(self: Box<Self>, runner: &Runner, grant: Grant) -> Result<SlotJob, OpError> {
        grant.allows(self.method)?;
        let slot = self.address.slot();
        let in_flight = runner.claim(format!("slot {slot}"), &self.operation)?;
        Ok(SlotJob {
            prepared: *self,
            in_flight,
        })
    }
}

/// A committed slot operation, run by its job.
#[derive(Debug)]
pub struct SlotJob {
    prepared: PreparedSlot,
    in_flight: InFlight,
}

/// A slot operation holding the ledger lock, ready to run.
#[derive(Debug)]
pub struct LockedSlotJob {
    job: SlotJob,
    lock: ExecGuard,
}

impl SlotJob {
    pub fn operation(&self) -> &str {
        &self.prepared.operation
    }

    /// The GPU it operates on.
    pub fn address(&self) -> PciAddress {
        self.prepared.address
    }

    /// The plan, as the reply gives it.
    pub fn plan(&self) -> &str {
        &self.prepared.plan
    }

    /// Waits for the ledger lock, as long as it takes (the job is queued meanwhile).
    pub async fn lock(self, runner: &Runner) -> LockedSlotJob {
        let lock = runner.lock_wait().await;
        LockedSlotJob { job: self, lock }
    }
}

impl LockedSlotJob {
    /// Runs the actions, then reads back the slot.
    pub async fn run(self, runner: &Runner) -> Result<String, OpError> {
        let LockedSlotJob { job, lock } = self;
        let _in_flight = job.in_flight;
        let p = job.prepared;
        let actions = p.actions;
        runner
            .run(
                &p.operation,
                lock,
                Some(p.snapshot),
                p.targets,
                Box::new(move |ex| run_actions(ex, &actions)),
            )
            .await
    }
}
