//! Large synthetic hosts for benchmarks, shaped like `bench/gen_sysfs.py`'s presets. May import:
//! crate::fixture.
//!
//! The shapes: AMD EPYC-style root complexes (root buses 00, 20, ..., e0, then further PCI
//! domains), each with its root complex, IOMMU and dummy host-bridge functions; a BMC VGA behind
//! an ASPEED PCIe-to-PCI bridge (the boot VGA) and FCH SMBus/LPC functions; GPUs in pairs behind
//! PCIe switches, A40s with their HDA audio function in the GPU's group; filler NVMe drives and
//! ConnectX-6 Dx NICs (two PFs, up to 62 VFs, every fourth VF on vfio-pci). mdevs are spread over
//! the GPUs with NVIDIA's one-type-per-GPU rule; every active mdev has an mdevctl definition and
//! some more are defined only. Output is a [`Fixture`], identical for identical parameters.

use gpuvirt_core::PciAddress;
use uuid::Uuid;

use crate::fixture::{
    Fixture, GroupSpec, IommuVendor, KernelSpec, MdevParentSpec, MdevSpec, MdevTypeSpec,
    MdevctlSpec, PciSpec, SriovSpec, VfDriverSpec,
};

/// Why a host cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("{mdevs} mdevs exceed the vGPU capacity {capacity} of the GPUs")]
    TooManyMdevs { mdevs: usize, capacity: usize },
    #[error("no GPU models given")]
    NoModels,
    #[error("ran out of PCI bus numbers")]
    OutOfBuses,
}

/// A GPU model of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuModel {
    /// Tesla V100 PCIe 16GB, the runbook's card.
    V100,
    /// H100 SXM5 80GB (compute profiles).
    H100,
    /// A40 48GB with its HDA function.
    A40,
}

struct ModelSpec {
    id: &'static str,
    subsystem: &'static str,
    audio: Option<&'static str>,
    fb_mb: u64,
    pcie_gen: u8,
    types: Vec<(String, String, u64, u32)>,
}

/// NVIDIA-style type table: (id, name, framebuffer MiB, max instances).
fn series(
    prefix: &str,
    base: u32,
    fb_total: u64,
    letters: &[(char, &[u64])],
    cap: u32,
) -> Vec<(String, String, u64, u32)> {
    let mut out = Vec::new();
    let mut id = base;
    for (letter, sizes) in letters {
        for gb in *sizes {
            let fb = gb * 1024;
            let max = (fb_total / fb).min(u64::from(cap)) as u32;
            out.push((
                format!("nvidia-{id}"),
                format!("{prefix}-{gb}{letter}"),
                fb,
                max,
            ));
            id += 1;
        }
    }
    out
}

impl GpuModel {
    fn spec(self) -> ModelSpec {
        match self {
            GpuModel::V100 => ModelSpec {
                id: "10de:1db4",
                subsystem: "10de:1214",
                audio: None,
                fb_mb: 16384,
                pcie_gen: 3,
                types: [
                    ("nvidia-214", "GRID V100-1Q", 1024, 16),
                    ("nvidia-215", "GRID V100-2Q", 2048, 8),
                    ("nvidia-216", "GRID V100-4Q", 4096, 4),
                    ("nvidia-217", "GRID V100-8Q", 8192, 2),
                    ("nvidia-218", "GRID V100-16Q", 16384, 1),
                    ("nvidia-299", "GRID V100-4C", 4096, 4),
                    ("nvidia-300", "GRID V100-8C", 8192, 2),
                    ("nvidia-301", "GRID V100-16C", 16384, 1),
                ]
                .iter()
                .map(|(i, n, f, m)| ((*i).to_owned(), (*n).to_owned(), *f, *m))
                .collect(),
            },
            GpuModel::H100 => ModelSpec {
                id: "10de:2330",
                subsystem: "10de:16c1",
                audio: None,
                fb_mb: 81920,
                pcie_gen: 5,
                types: series(
                    "NVIDIA H100XM",
                    1145,
                    81920,
                    &[('C', &[4, 5, 8, 10, 16, 20, 40, 80])],
                    32,
                ),
            },
            GpuModel::A40 => ModelSpec {
                id: "10de:2235",
                subsystem: "10de:145a",
                audio: Some("10de:1aef"),
                fb_mb: 49152,
                pcie_gen: 4,
                types: series(
                    "NVIDIA A40",
                    557,
                    49152,
                    &[
                        ('B', &[1, 2]),
                        ('Q', &[1, 2, 3, 4, 6, 8, 12, 16, 24, 48]),
                        ('A', &[1, 2, 3, 4, 6, 8, 12, 16, 24, 48]),
                        ('C', &[4, 6, 8, 12, 16, 24, 48]),
                    ],
                    32,
                ),
            },
        }
    }
}

/// Size knobs of a synthetic host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenParams {
    pub gpus: usize,
    /// Active mdevs, spread over the GPUs.
    pub mdevs: usize,
    /// Total PCI functions to reach with NVMe/NIC filler (VFs count).
    pub pci_total: usize,
    /// Cycled over the GPUs.
    pub models: Vec<GpuModel>,
    /// mdevctl definitions without an active mdev (`start = manual`).
    pub defined_inactive: usize,
    pub seed: u64,
}

/// The bench presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The runbook's single-V100 host with 2 mdevs.
    Small,
    /// 8 GPUs (V100, H100, A40), 64 mdevs, about 200 functions.
    Medium,
    /// 64 A40s, 2048 mdevs, 5000 functions.
    Large,
}

impl GenParams {
    pub fn preset(p: Preset) -> Self {
        match p {
            Preset::Small => Self {
                gpus: 1,
                mdevs: 2,
                pci_total: 0,
                models: vec![GpuModel::V100],
                defined_inactive: 1,
                seed: 1,
            },
            Preset::Medium => Self {
                gpus: 8,
                mdevs: 64,
                pci_total: 200,
                models: vec![GpuModel::V100, GpuModel::H100, GpuModel::A40],
                defined_inactive: 8,
                seed: 1,
            },
            Preset::Large => Self {
                gpus: 64,
                mdevs: 2048,
                pci_total: 5000,
                models: vec![GpuModel::A40],
                defined_inactive: 64,
                seed: 1,
            },
        }
    }
}

/// SplitMix64: small, seeded, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uuid(&mut self) -> Uuid {
        let v = (u128::from(self.next()) << 64) | u128::from(self.next());
        uuid::Builder::from_random_bytes(v.to_be_bytes()).into_uuid()
    }
}

const SPAN: u8 = 0x20;

struct HostBridge {
    domain: u16,
    root_bus: u8,
    /// Wider than a bus number: the last root complex's span ends at 0x100.
    next_bus: u16,
    numa: i32,
    rp_slots: Vec<(u8, u8)>,
    misc_slot: u8,
}

struct Builder {
    devices: Vec<PciSpec>,
    hbs: Vec<HostBridge>,
    next_group: u32,
    functions: usize,
}

impl Builder {
    fn add(&mut self, mut spec: PciSpec, numa: i32, group: Option<u32>) -> PciAddress {
        spec.numa_node = numa;
        spec.iommu_group = GroupSpec::Number(group.unwrap_or_else(|| self.group()));
        let a = spec.address;
        self.functions += 1 + spec.sriov.as_ref().map_or(0, |s| s.num_vfs as usize);
        self.devices.push(spec);
        a
    }

    fn group(&mut self) -> u32 {
        self.next_group += 1;
        self.next_group - 1
    }

    fn new_hb(&mut self) -> Result<usize, GenerateError> {
        let idx = self.hbs.len();
        let domain = u16::try_from(idx / 8).map_err(|_| GenerateError::OutOfBuses)?;
        let root_bus = (idx % 8) as u8 * SPAN;
        let numa = ((idx / 4) % 2) as i32;
        self.hbs.push(HostBridge {
            domain,
            root_bus,
            next_bus: u16::from(root_bus) + 1,
            numa,
            rp_slots: (1..8).flat_map(|s| (1..8).map(move |f| (s, f))).collect(),
            misc_slot: 0x18,
        });
        let at = |d, f| PciAddress::new(domain, root_bus, d, f);
        let mut rc = PciSpec::new(at(0, 0), 0x060000, "1022:1480");
        rc.subsystem = Some("1022:1480".into());
        self.add(rc, numa, None);
        let mut iommu = PciSpec::new(at(0, 2), 0x080600, "1022:1481");
        iommu.subsystem = Some("1022:1481".into());
        self.add(iommu, numa, None);
        for s in 1..8 {
            let mut d = PciSpec::new(at(s, 0), 0x060000, "1022:1482");
            d.subsystem = Some("1022:1482".into());
            self.add(d, numa, None);
        }
        Ok(idx)
    }

    /// A host bridge with `buses` free bus numbers and a free root-port slot.
    fn hb_with(&mut self, buses: u8) -> Result<usize, GenerateError> {
        let last = self.hbs.len().wrapping_sub(1);
        match self.hbs.last() {
            Some(hb)
                if u16::from(hb.root_bus) + u16::from(SPAN) - hb.next_bus >= u16::from(buses)
                    && !hb.rp_slots.is_empty() =>
            {
                Ok(last)
            }
            _ => self.new_hb(),
        }
    }

    /// A root port opening `buses` buses; returns its address and first secondary bus.
    fn root_port(&mut self, hb: usize, buses: u8) -> (PciAddress, u8, i32) {
        let h = &mut self.hbs[hb];
        let (slot, func) = h.rp_slots.remove(0);
        let sec = h.next_bus as u8;
        h.next_bus += u16::from(buses);
        let (domain, root_bus, numa) = (h.domain, h.root_bus, h.numa);
        let mut rp = PciSpec::new(
            PciAddress::new(domain, root_bus, slot, func),
            0x060400,
            "1022:1483",
        );
        rp.subsystem = Some("1022:1453".into());
        rp.driver = Some("pcieport".into());
        rp.secondary_bus = Some(sec);
        let a = self.add(rp, numa, None);
        (a, sec, numa)
    }

    fn platform(&mut self) -> Result<(), GenerateError> {
        let h = &self.hbs[0];
        let (domain, root_bus, numa) = (h.domain, h.root_bus, h.numa);
        let g = self.group();
        let mut smbus = PciSpec::new(
            PciAddress::new(domain, root_bus, 0x14, 0),
            0x0c0500,
            "1022:790b",
        );
        smbus.subsystem = Some("1022:790b".into());
        smbus.revision = 0x61;
        smbus.driver = Some("piix4_smbus".into());
        self.add(smbus, numa, Some(g));
        let mut lpc = PciSpec::new(
            PciAddress::new(domain, root_bus, 0x14, 3),
            0x060100,
            "1022:790e",
        );
        lpc.subsystem = Some("1022:790e".into());
        lpc.revision = 0x51;
        self.add(lpc, numa, Some(g));
        let (_, sec, numa) = self.root_port(0, 2);
        let g = self.group();
        let mut br = PciSpec::new(PciAddress::new(domain, sec, 0, 0), 0x060400, "1a03:1150");
        br.revision = 0x04;
        br.secondary_bus = Some(sec + 1);
        self.add(br, numa, Some(g));
        let mut vga = PciSpec::new(
            PciAddress::new(domain, sec + 1, 0, 0),
            0x030000,
            "1a03:2000",
        );
        vga.subsystem = Some("15d9:1b95".into());
        vga.revision = 0x41;
        vga.driver = Some("ast".into());
        vga.boot_vga = true;
        self.add(vga, numa, Some(g));
        Ok(())
    }

    /// Root port, PCIe switch (upstream + one downstream port per GPU), GPUs.
    fn gpu_pair(
        &mut self,
        models: &[GpuModel],
    ) -> Result<Vec<(PciAddress, GpuModel)>, GenerateError> {
        let n = models.len() as u8;
        let gen = models.iter().map(|m| m.spec().pcie_gen).max().unwrap_or(3);
        let switch = match gen {
            5.. => "1000:c030",
            4 => "1000:c010",
            _ => "10b5:8747",
        };
        let hb = self.hb_with(2 + n)?;
        let (_, sec, numa) = self.root_port(hb, 2 + n);
        let domain = self.hbs[hb].domain;
        let mut up = PciSpec::new(PciAddress::new(domain, sec, 0, 0), 0x060400, switch);
        up.revision = 0xb0;
        up.driver = Some("pcieport".into());
        up.secondary_bus = Some(sec + 1);
        self.add(up, numa, None);
        let mut gpus = Vec::new();
        for (i, m) in models.iter().enumerate() {
            let bus = sec + 2 + i as u8;
            let mut dn = PciSpec::new(
                PciAddress::new(domain, sec + 1, i as u8, 0),
                0x060400,
                switch,
            );
            dn.revision = 0xb0;
            dn.driver = Some("pcieport".into());
            dn.secondary_bus = Some(bus);
            self.add(dn, numa, None);
            let spec = m.spec();
            let g = self.group();
            let mut gpu = PciSpec::new(PciAddress::new(domain, bus, 0, 0), 0x030200, spec.id);
            gpu.subsystem = Some(spec.subsystem.into());
            gpu.revision = 0xa1;
            gpu.driver = Some("nvidia".into());
            let a = self.add(gpu, numa, Some(g));
            if let Some(audio) = spec.audio {
                let mut hda = PciSpec::new(PciAddress::new(domain, bus, 0, 1), 0x040300, audio);
                hda.subsystem = Some(spec.subsystem.into());
                hda.revision = 0xa1;
                hda.driver = Some("snd_hda_intel".into());
                self.add(hda, numa, Some(g));
            }
            gpus.push((a, *m));
        }
        Ok(gpus)
    }

    fn nvme(&mut self, rng: &mut Rng) -> Result<(), GenerateError> {
        let hb = self.hb_with(1)?;
        let (_, sec, numa) = self.root_port(hb, 1);
        let domain = self.hbs[hb].domain;
        let (id, sub) = if rng.next() % 2 == 0 {
            ("144d:a824", "144d:a809")
        } else {
            ("8086:0b60", "8086:8008")
        };
        let mut d = PciSpec::new(PciAddress::new(domain, sec, 0, 0), 0x010802, id);
        d.subsystem = Some(sub.into());
        d.driver = Some("nvme".into());
        self.add(d, numa, None);
        Ok(())
    }

    /// A ConnectX-6 Dx: two PFs with `vfs` VFs between them (ARI, one bus).
    fn nic(&mut self, vfs: u32) -> Result<(), GenerateError> {
        let hb = self.hb_with(1)?;
        let (_, sec, numa) = self.root_port(hb, 1);
        let domain = self.hbs[hb].domain;
        for pf in 0..2u32 {
            let num = vfs / 2 + if pf == 0 { vfs % 2 } else { 0 };
            let mut d = PciSpec::new(
                PciAddress::new(domain, sec, 0, pf as u8),
                0x020000,
                "15b3:101d",
            );
            d.subsystem = Some("15b3:0016".into());
            d.driver = Some("mlx5_core".into());
            d.isolated = true;
            if vfs > 0 {
                d.sriov = Some(SriovSpec {
                    total_vfs: num.max(8),
                    num_vfs: num,
                    vf_id: Some("15b3:101e".into()),
                    offset: 2,
                    stride: 2,
                    // VF i of this PF is VF 2i+pf of the card; every fourth goes to vfio-pci.
                    vf_drivers: (0..num)
                        .filter(|i| (2 * i + pf) % 4 == 3)
                        .map(|index| VfDriverSpec {
                            index,
                            driver: "vfio-pci".into(),
                        })
                        .collect(),
                });
            }
            self.add(d, numa, None);
        }
        Ok(())
    }

    fn dummy(&mut self) {
        let Some(h) = self.hbs.last_mut() else {
            return;
        };
        let a = PciAddress::new(h.domain, h.root_bus, h.misc_slot, 0);
        h.misc_slot += 1;
        let numa = h.numa;
        let mut d = PciSpec::new(a, 0x130000, "1022:148a");
        d.subsystem = Some("1022:148a".into());
        self.add(d, numa, None);
    }
}

/// Builds the synthetic host for `p`.
pub fn generate(p: &GenParams) -> Result<Fixture, GenerateError> {
    if p.models.is_empty() {
        return Err(GenerateError::NoModels);
    }
    let mut rng = Rng(p.seed);
    let mut b = Builder {
        devices: Vec::new(),
        hbs: Vec::new(),
        next_group: 0,
        functions: 0,
    };
    b.new_hb()?;
    b.platform()?;
    let models: Vec<GpuModel> = (0..p.gpus).map(|i| p.models[i % p.models.len()]).collect();
    let mut gpus = Vec::new();
    for pair in models.chunks(2) {
        gpus.extend(b.gpu_pair(pair)?);
    }
    b.nvme(&mut rng)?;
    b.nic(0)?;
    let mut units = 1;
    while b.functions < p.pci_total {
        let remaining = p.pci_total - b.functions;
        if remaining >= 2 && (units < 4 || remaining < 12 || units % 5 != 0) {
            b.nvme(&mut rng)?;
        } else if remaining >= 3 {
            b.nic((remaining - 3).min(62) as u32)?;
        } else {
            b.dummy();
        }
        units += 1;
    }

    // mdev placement: round-robin up to each GPU's capacity, one type per GPU.
    let caps: Vec<usize> = gpus
        .iter()
        .map(|(_, m)| {
            m.spec()
                .types
                .iter()
                .map(|t| t.3 as usize)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let capacity: usize = caps.iter().sum();
    if p.mdevs > capacity {
        return Err(GenerateError::TooManyMdevs {
            mdevs: p.mdevs,
            capacity,
        });
    }
    let mut counts = vec![0usize; gpus.len()];
    let mut placed = 0;
    while placed < p.mdevs {
        for (i, c) in counts.iter_mut().enumerate() {
            if placed < p.mdevs && *c < caps[i] {
                *c += 1;
                placed += 1;
            }
        }
    }
    let mut parents = Vec::new();
    let mut mdevs = Vec::new();
    let mut mdevctl = Vec::new();
    let mut chosen_types = Vec::new();
    for ((a, m), count) in gpus.iter().zip(&counts) {
        let spec = m.spec();
        // The biggest compute profile that fits `count` instances, else any profile that does.
        let fits: Vec<_> = spec
            .types
            .iter()
            .filter(|t| t.3 as usize >= *count)
            .collect();
        let compute: Vec<_> = fits
            .iter()
            .filter(|t| t.1.ends_with('C'))
            .copied()
            .collect();
        let pool = if compute.is_empty() { &fits } else { &compute };
        let chosen = pool
            .iter()
            .max_by(|x, y| (x.2, &x.0).cmp(&(y.2, &y.0)))
            .map(|t| t.0.clone())
            .unwrap_or_else(|| spec.types[0].0.clone());
        parents.push(MdevParentSpec {
            device: Some(*a),
            virtual_name: None,
            driver: None,
            module: Some("nvidia_vgpu_vfio".into()),
            mdev_driver: None,
            pool: Some(spec.fb_mb),
            homogeneous: true,
            core_counted: false,
            types: spec
                .types
                .iter()
                .map(|(id, name, fb, max)| MdevTypeSpec {
                    id: id.clone(),
                    name: Some(name.clone()),
                    description: Some(format!(
                        "num_heads={}, frl_config=60, framebuffer={fb}M, max_resolution=4096x2160, max_instance={max}",
                        if name.ends_with('Q') || name.ends_with('B') { 4 } else { 1 }
                    )),
                    device_api: "vfio-pci".into(),
                    max_instances: Some(*max),
                    cost: *fb,
                })
                .collect(),
        });
        for _ in 0..*count {
            let uuid = rng.uuid();
            mdevs.push(MdevSpec {
                uuid,
                parent: a.to_string(),
                type_id: chosen.clone(),
                busy: false,
            });
            mdevctl.push(MdevctlSpec {
                uuid,
                parent: a.to_string(),
                type_id: chosen.clone(),
                start: "auto".into(),
                attrs: Vec::new(),
            });
        }
        chosen_types.push(chosen);
    }
    for i in 0..p.defined_inactive {
        if gpus.is_empty() {
            break;
        }
        let g = i % gpus.len();
        mdevctl.push(MdevctlSpec {
            uuid: rng.uuid(),
            parent: gpus[g].0.to_string(),
            type_id: chosen_types[g].clone(),
            start: "manual".into(),
            attrs: Vec::new(),
        });
    }
    Ok(Fixture {
        description: Some(format!(
            "synthetic host: {} PCI functions, {} GPUs, {} mdevs (seed {})",
            b.functions, p.gpus, p.mdevs, p.seed
        )),
        kernel: KernelSpec {
            release: "6.1.0-13-amd64".into(),
            cmdline: None,
            modules: vec!["nvidia_vgpu_vfio".into(), "vfio_pci".into(), "mdev".into()],
            iommu: IommuVendor::Amd,
            processes: vec!["nvidia-vgpu-mgr".into()],
        },
        devices: b.devices,
        drivers: Vec::new(),
        modules: Vec::new(),
        mdev_parents: parents,
        mdevs,
        mdevctl,
    })
}

/// Number of PCI functions a fixture describes (VFs included).
pub fn pci_function_count(f: &Fixture) -> usize {
    f.devices.len()
        + f.devices
            .iter()
            .filter_map(|d| d.sriov.as_ref())
            .map(|s| s.num_vfs as usize)
            .sum::<usize>()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn small_preset_shape() {
        let f = generate(&GenParams::preset(Preset::Small)).unwrap();
        assert_eq!(f.mdevs.len(), 2);
        assert_eq!(f.mdevctl.len(), 3);
        assert_eq!(f.mdev_parents.len(), 1);
        assert_eq!(
            f.mdevs[0].type_id, "nvidia-300",
            "biggest C profile for 2 instances"
        );
        assert_eq!(
            generate(&GenParams::preset(Preset::Small)).unwrap(),
            f,
            "deterministic"
        );
    }

    #[test]
    fn refuses_more_mdevs_than_capacity() {
        let mut p = GenParams::preset(Preset::Small);
        p.mdevs = 17;
        assert_eq!(
            generate(&p),
            Err(GenerateError::TooManyMdevs {
                mdevs: 17,
                capacity: 16
            })
        );
    }
}
