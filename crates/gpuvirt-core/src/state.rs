//! What gpuvirt keeps on disk between runs: the ownership ledger, remembered vGPU type names,
//! mdevctl's definitions and the boot-change record. May import: crate::host, crate::model.

pub mod boot_changes;
pub mod ledger;
pub mod mdevctl;
pub mod vgpu_names;
