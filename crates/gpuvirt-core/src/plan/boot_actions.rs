//! The boot-file part of a plan: writes, removals and the initramfs rebuild that bring
//! gpuvirt's boot files to what the policy wants. May import: crate::model, crate::policy,
//! plan/{action, boot, types}.

use std::path::PathBuf;

use super::action::{Action, Step};
use super::boot::{self, EarlyCard, InitramfsTooling, BOOT_FILES};
use super::types::{PlanState, PlannedAction};
use crate::model::Inventory;
use crate::policy::Policy;

/// Writes and removals that bring gpuvirt's boot files to what the policy wants, and an
/// initramfs rebuild when modprobe.d changes (naming the tool the executor will run), with a
/// note when no tool is installed.
pub(super) fn boot_actions(
    policy: &Policy,
    inventory: &Inventory,
    state: &PlanState,
    early: &[EarlyCard],
) -> (Vec<PlannedAction>, Vec<String>) {
    let wanted = boot::wanted_boot_files(policy, inventory, early, &state.original_drivers);
    let mut actions = Vec::new();
    let mut initramfs = false;
    let why_of = |path: &PathBuf| -> String {
        if boot::is_modprobe_conf(path) {
            "module blacklist/options and early vfio-pci ids for the next boot".to_string()
        } else {
            "early vfio-pci binding of passthrough slots at the next boot".to_string()
        }
    };
    for (path, contents) in &wanted {
        if state.boot_files.get(path) != Some(contents) {
            initramfs |= boot::is_modprobe_conf(path);
            actions.push(PlannedAction::new(
                Action::WriteBootFile {
                    path: path.clone(),
                    contents: contents.clone(),
                },
                why_of(path),
                None,
                None,
            ));
        }
    }
    for path in state.boot_files.keys() {
        if !wanted.contains_key(path) && BOOT_FILES.iter().any(|b| PathBuf::from(b) == *path) {
            initramfs |= boot::is_modprobe_conf(path);
            actions.push(PlannedAction::new(
                Action::RemoveBootFile { path: path.clone() },
                format!("no longer wanted by the policy ({})", why_of(path)),
                None,
                None,
            ));
        }
    }
    let mut notes = Vec::new();
    if initramfs {
        let why = "the initramfs carries a copy of modprobe.d";
        let mut planned = PlannedAction::new(Action::RegenerateInitramfs, why.into(), None, None);
        match state.initramfs_tool {
            InitramfsTooling::Unknown => {}
            InitramfsTooling::Found(tool) => {
                let argv = tool.argv();
                planned.reason = format!("{why}; gpuvirt runs `{}`", argv.join(" "));
                planned.steps = vec![Step::Run {
                    argv: argv.iter().map(|a| a.to_string()).collect(),
                }];
            }
            InitramfsTooling::Missing => {
                // Still planned: the boot files are written either way, and the apply then
                // stops at this step with the same advice instead of forgetting the rebuild.
                planned.reason = format!("{why}; no tool to regenerate it is installed");
                notes.push(
                    "neither update-initramfs nor dracut is installed, so the initramfs cannot \
                     be regenerated and the apply will fail at that step: install \
                     initramfs-tools (then run `update-initramfs -u`) or dracut (then run \
                     `dracut -f`)"
                        .to_string(),
                );
            }
        }
        actions.push(planned);
    }
    (actions, notes)
}
