//! The policy's typed vocabulary: roles, rule settings, matches and the parsed [`Policy`]
//! itself, shared by the parser and (in gpuvirt-core) the matcher, the validator and the
//! planner. May import: gpuvirt_types (PciAddress), crate::diagnostic.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use gpuvirt_types::PciAddress;

use crate::diagnostic::{Location, PolicyDiagnostic, Severity, SourceMap};

/// The only policy format version this build reads.
pub const POLICY_VERSION: i64 = 1;

/// What a card is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The host keeps it; gpuvirt returns it to its original driver if it had taken it.
    Host,
    /// The whole slot is bound to vfio-pci for a VM.
    Passthrough,
    /// The card is split into vGPUs (mdev, NVIDIA per-VF vGPU or plain SR-IOV VFs).
    Shard,
    /// Observed and reported, never changed; manual D-Bus operations are allowed.
    Unmanaged,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Host, Role::Passthrough, Role::Shard, Role::Unmanaged];

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Passthrough => "passthrough",
            Role::Shard => "shard",
            Role::Unmanaged => "unmanaged",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether gpuvirtd corrects the host or only reports how it differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    #[default]
    Enforce,
    Monitor,
}

impl Enforcement {
    pub fn as_str(&self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Monitor => "monitor",
        }
    }
}

/// How a passthrough card is kept away from host drivers from early boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EarlyMethod {
    /// A udev rule sets `driver_override=vfio-pci` on each function of the slot as it appears,
    /// and vfio-pci is loaded at boot: per slot, so identical cards can have different roles.
    #[default]
    DriverOverride,
    /// `options vfio-pci ids=…` and a `softdep` in modprobe.d, then the initramfs is
    /// regenerated: by vendor:device id, so it catches every card with those ids.
    Modprobe,
}

impl EarlyMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            EarlyMethod::DriverOverride => "driver-override",
            EarlyMethod::Modprobe => "modprobe",
        }
    }
}

/// How many vGPUs a shard rule wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardCount {
    Count(u32),
    /// As many as the card can hold of the type.
    Max,
}

impl fmt::Display for ShardCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardCount::Count(n) => write!(f, "{n}"),
            ShardCount::Max => f.write_str("\"max\""),
        }
    }
}

/// A shard rule's settings: the type (an id such as `nvidia-300`, a name such as
/// `GRID V100-8C`, or the name's last word `V100-8C`; `vf` for plain SR-IOV) and the count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardSpec {
    #[serde(rename = "type")]
    pub type_spec: String,
    pub count: ShardCount,
}

/// A rule's role and the settings that role takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum RoleSettings {
    Host,
    Passthrough {
        early: bool,
        early_method: EarlyMethod,
        /// The card stays with the host until a VM that uses it starts: the libvirt hook
        /// (or a manual AssignPassthrough/ReturnToHost) moves it, and the planner takes
        /// either state as in policy.
        on_demand: bool,
    },
    Shard(ShardSpec),
    Unmanaged,
}

impl RoleSettings {
    pub fn role(&self) -> Role {
        match self {
            RoleSettings::Host => Role::Host,
            RoleSettings::Passthrough { .. } => Role::Passthrough,
            RoleSettings::Shard(_) => Role::Shard,
            RoleSettings::Unmanaged => Role::Unmanaged,
        }
    }
}

/// What a rule matches; every key given must fit (an empty match is rejected).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    pub address: Option<PciAddress>,
    pub vendor: Option<u16>,
    pub device: Option<u16>,
    pub subsystem_vendor: Option<u16>,
    pub subsystem_device: Option<u16>,
    /// Glob (`*`, `?`; case-insensitive) over the pci.ids product name.
    pub name: Option<String>,
    /// The driver the card had before gpuvirt rebound it (else the bound driver).
    pub driver: Option<String>,
    pub boot_vga: Option<bool>,
}

impl Match {
    pub fn is_empty(&self) -> bool {
        *self == Match::default()
    }
}

/// Who writes to a card (`owner`). One writer per device: an engine that manages cards itself
/// (KubeVirt's own mdev configuration, Nova's `create_mdev`, Proxmox's VM start) and gpuvirt
/// both binding drivers or creating mdevs on one card is how their worst bugs happen, so a
/// card another engine owns is only observed and reported by gpuvirt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// gpuvirt: the rule's role applies (the default).
    #[default]
    Gpuvirt,
    Kubevirt,
    Nova,
    Proxmox,
    /// Any other engine or person.
    External,
}

impl Owner {
    pub const ALL: [Owner; 5] = [
        Owner::Gpuvirt,
        Owner::Kubevirt,
        Owner::Nova,
        Owner::Proxmox,
        Owner::External,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Owner::Gpuvirt => "gpuvirt",
            Owner::Kubevirt => "kubevirt",
            Owner::Nova => "nova",
            Owner::Proxmox => "proxmox",
            Owner::External => "external",
        }
    }

    pub fn is_gpuvirt(&self) -> bool {
        *self == Owner::Gpuvirt
    }

    pub(crate) fn from_name(name: &str) -> Option<Owner> {
        Owner::ALL.into_iter().find(|o| o.as_str() == name)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[gpu]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuRule {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Match,
    #[serde(flatten)]
    pub settings: RoleSettings,
    /// Interlock allowance: passing through the boot/console GPU.
    pub allow_boot_vga: bool,
    /// Who writes to the matched cards; another engine's cards have role `unmanaged`.
    #[serde(skip_serializing_if = "Owner::is_gpuvirt")]
    pub owner: Owner,
    /// The Kubernetes extended resource name the device plugin advertises the cards (or their
    /// vGPUs) under, over its default (NVIDIA's plugin's naming).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// Why `name` is not a Kubernetes extended resource name (`<domain>/<name>`): the domain a DNS
/// subdomain of at most 253 characters, not `kubernetes.io` or under it (reserved), the name
/// at most 63 characters of `[A-Za-z0-9._-]`, starting and ending with a letter or digit.
pub fn resource_name_problem(name: &str) -> Option<String> {
    let Some((domain, short)) = name.split_once('/') else {
        return Some("it is not <domain>/<name>, e.g. \"nvidia.com/GRID_V100-8C\"".into());
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Some(format!(
            "domain {domain:?} is not a DNS subdomain (lower case letters, digits, '-', '.')"
        ));
    }
    if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
        return Some("the kubernetes.io domain is reserved for Kubernetes' own resources".into());
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if short.is_empty()
        || short.len() > 63
        || !short
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || !alnum(short.chars().next())
        || !alnum(short.chars().last())
    {
        return Some(format!(
            "name {short:?} must be 1-63 letters, digits, '.', '_', '-', starting and ending with a letter or digit"
        ));
    }
    None
}

impl GpuRule {
    pub fn role(&self) -> Role {
        self.settings.role()
    }

    /// Whether the rule passes its cards through on demand (`on_demand = true`).
    pub fn on_demand(&self) -> bool {
        matches!(
            self.settings,
            RoleSettings::Passthrough {
                on_demand: true,
                ..
            }
        )
    }
}

/// `[host]`: module blacklist and options written to modprobe.d (initramfs regenerated).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostSettings {
    pub blacklist: Vec<String>,
    pub options: BTreeMap<String, String>,
}

/// A parsed, schema-checked policy.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub version: i64,
    pub default_role: Role,
    pub enforcement: Enforcement,
    pub host: HostSettings,
    pub rules: Vec<GpuRule>,
    /// Warnings found while parsing (a valid policy may still have some).
    #[serde(skip)]
    pub warnings: Vec<PolicyDiagnostic>,
    #[serde(skip)]
    pub(crate) source: SourceMap,
    /// Where each key path sits in the file, for semantic diagnostics.
    #[serde(skip)]
    pub(crate) locations: BTreeMap<String, Location>,
}

impl Policy {
    /// The file name given to [`Policy::parse`].
    pub fn file(&self) -> &str {
        self.source.file()
    }

    /// The rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&GpuRule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The location of `key_path`, or of its nearest recorded parent (the file start at worst).
    pub fn location(&self, key_path: &str) -> Location {
        let mut path = key_path;
        loop {
            if let Some(loc) = self.locations.get(path) {
                return loc.clone();
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => return self.locations.get("").cloned().unwrap_or_default(),
            }
        }
    }

    /// A diagnostic at `key_path` (or its nearest recorded parent), for checks made after
    /// parsing (gpuvirt-core's host-dependent rules).
    pub fn diagnostic(
        &self,
        severity: Severity,
        key_path: &str,
        message: String,
        allowed: Option<String>,
    ) -> PolicyDiagnostic {
        self.source.diagnostic(
            severity,
            &self.location(key_path),
            key_path,
            message,
            allowed,
        )
    }
}
