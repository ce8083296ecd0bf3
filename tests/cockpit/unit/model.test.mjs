// model.js without a browser or Cockpit: fake property dictionaries in the shapes cockpit.dbus
// decodes (structs as arrays, a{s(sssu)} as an object of arrays), rows and words out.
//   node --test tests/cockpit/unit

import { test } from "node:test";
import assert from "node:assert/strict";
import * as model from "../../../cockpit/gpuvirt/model.js";

const GPU_PATH = "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0";
const GROUP_PATH = "/org/gpuvirt/GpuVirt1/iommu_groups/66";

const gpu = (over) => Object.assign({
    PciAddress: "0000:41:00.0", VendorName: "NVIDIA Corporation", ProductName: "GV100GL [Tesla V100 PCIe 16GB]",
    Driver: "nvidia", State: "host", Role: "unmanaged", PolicyRule: "", NumaNode: 1, ResetMethods: ["flr", "bus"],
    SriovNumVfs: 0, SriovTotalVfs: 0, BootVga: false, IommuGroup: GROUP_PATH, Companions: [], VirtualFunctions: [],
    PhysicalFunction: "", KernelModules: ["nvidiafb", "nouveau"],
}, over || {});

const manager = (over) => Object.assign({
    IommuEnabled: true, IommuReasons: ["5 IOMMU groups"], VfioAvailable: true, MdevAvailable: false,
    KernelRelease: "6.1.0-13-amd64", ScanWarnings: [], Version: "0.1.0", RebootRequired: false, RebootReasons: [],
    PolicyPath: "/etc/gpuvirt/policy.toml", EnforcementMode: "monitor", PolicyError: "", LastApply: "", Drift: [],
}, over || {});

const yes = { passthrough: "yes", shard: "yes", policy: "yes" };

test("gpuRows: sorted by address, names joined, absent values empty", () => {
    const rows = model.gpuRows({
        "/b": gpu({ PciAddress: "0000:c1:00.0", NumaNode: -1, ResetMethods: [], SriovTotalVfs: 16, SriovNumVfs: 4 }),
        [GPU_PATH]: gpu(),
    });
    assert.deepEqual(rows.map(r => r.address), ["0000:41:00.0", "0000:c1:00.0"]);
    assert.equal(rows[0].name, "NVIDIA Corporation GV100GL [Tesla V100 PCIe 16GB]");
    assert.equal(rows[0].resetMethods, "flr, bus");
    assert.equal(rows[0].numa, "1");
    assert.equal(rows[1].numa, "", "NUMA -1 is no node");
    assert.equal(rows[1].sriov, "4 of 16 VFs");
    assert.equal(rows[0].sriov, "");
    assert.equal(rows[0].group, GROUP_PATH);
    assert.equal(model.gpuRows({ "/x": gpu({ IommuGroup: "/" }) })[0].group, "", "object path / is none");
});

test("healthRows and rebootBanner", () => {
    const rows = model.healthRows(manager({ ScanWarnings: ["cannot read uevent of 0000:00:02.0"] }));
    const by = Object.fromEntries(rows.map(r => [r.key, r]));
    assert.equal(by.iommu.ok, true);
    assert.deepEqual(by.iommu.details, ["5 IOMMU groups"]);
    assert.equal(by.mdev.ok, false);
    assert.equal(by.mdev.value, "not available");
    assert.equal(by.kernel.value, "6.1.0-13-amd64");
    assert.equal(by.scan.ok, false);
    assert.equal(by.scan.value, "1");
    assert.deepEqual(model.healthRows(null), []);
    assert.equal(model.rebootBanner(manager()), null);
    const banner = model.rebootBanner(manager({ RebootRequired: true, RebootReasons: ["write /etc/modprobe.d/gpuvirt.conf"] }));
    assert.deepEqual(banner.reasons, ["write /etc/modprobe.d/gpuvirt.conf"]);
});

test("groupView: members from a(sus), verdict and problems in words", () => {
    const row = model.gpuRows({ [GPU_PATH]: gpu() })[0];
    const groups = {
        [GROUP_PATH]: { Id: 66, Viable: false, ViabilityProblems: ["0000:41:00.1 is bound to snd_hda_intel, which the host uses"],
            Members: [["0000:41:00.1", 0x040300, "snd_hda_intel"], ["0000:41:00.0", 0x030200, "nvidia"], ["0000:41:00.2", 0x0c0330, ""]] },
    };
    const v = model.groupView(row, groups);
    assert.equal(v.id, 66);
    assert.equal(v.viable, false);
    assert.match(v.verdict, /^Not viable/);
    assert.deepEqual(v.problems, ["0000:41:00.1 is bound to snd_hda_intel, which the host uses"]);
    assert.deepEqual(v.members.map(m => [m.name, m.classCode, m.className, m.driver, m.isGpu]), [
        ["0000:41:00.0", "030200", "3D controller", "nvidia", true],
        ["0000:41:00.1", "040300", "Audio device", "snd_hda_intel", false],
        ["0000:41:00.2", "0c0330", "USB controller", "(none)", false],
    ]);
    assert.equal(model.groupView(model.gpuRows({ "/x": gpu({ IommuGroup: "/" }) })[0], groups), null);
    assert.equal(model.groupView(row, {}), null, "a group not (yet) among the proxies");
});

test("typeTables: a{s(sssu)} to sorted types with availability; labels from the GPU", () => {
    const tables = model.typeTables({
        [GPU_PATH]: { Name: "0000:41:00.0", Backend: "mdev", Children: [], Types: {
            "nvidia-300": ["GRID V100-8C", "framebuffer=8192M", "vfio-pci", 2],
            "nvidia-299": ["GRID V100-4C", "framebuffer=4096M", "vfio-pci", 4],
            "nvidia-1000": ["X", "", "vfio-pci", 0],
        } },
        "/org/gpuvirt/GpuVirt1/parents/mtty": { Name: "mtty", Backend: "mdev", Children: ["/m"], Types: { "mtty-1": ["Single port serial", "", "vfio-pci", 24] } },
    }, { [GPU_PATH]: gpu({ PolicyRule: "vdi" }) });
    assert.deepEqual(tables.map(t => t.name), ["0000:41:00.0", "mtty"]);
    assert.deepEqual(tables[0].types.map(t => [t.id, t.available]), [["nvidia-299", 4], ["nvidia-300", 2], ["nvidia-1000", 0]]);
    assert.equal(tables[0].label, "0000:41:00.0 GV100GL [Tesla V100 PCIe 16GB]");
    assert.equal(tables[0].policyRule, "vdi");
    assert.equal(tables[1].label, "mtty");
    assert.equal(tables[1].children, 1);
    assert.deepEqual(model.defineChoices(tables).map(c => c.parent), ["0000:41:00.0", "mtty"]);
});

test("mdevRows and definitionRows: mdevctl's definitions are read-only", () => {
    const rows = model.mdevRows({
        "/m2": { Uuid: "bbbb", ParentName: "0000:41:00.0", Type: "nvidia-300", TypeName: "GRID V100-8C", Active: true, Driver: "vfio_mdev", IommuGroupId: 12 },
        "/m1": { Uuid: "aaaa", ParentName: "0000:41:00.0", Type: "nvidia-300", TypeName: "", Active: true, Driver: "", IommuGroupId: -1 },
    });
    assert.deepEqual(rows.map(r => [r.uuid, r.group]), [["aaaa", ""], ["bbbb", "12"]]);
    const defs = model.definitionRows([
        ["u1", "0000:41:00.0", "nvidia-300", "gpuvirt", "auto", [], true],
        ["u2", "mtty", "mtty-1", "mdevctl", "manual", [["attr", "1"]], false],
    ]);
    assert.equal(defs[0].readOnly, false);
    assert.equal(defs[1].readOnly, true);
    assert.deepEqual(defs[1].attrs, ["attr=1"]);
    for (const action of ["start", "stop", "undefine"])
        assert.match(model.disabledReason(action, yes, null, { definition: defs[1] }), /mdevctl/);
    assert.equal(model.disabledReason("stop", yes, null, { definition: defs[0] }), "");
    assert.equal(model.disabledReason("start", yes, null, { definition: defs[0] }), "Already running.");
    assert.equal(model.disabledReason("undefine", yes, null, { definition: defs[0] }), "");
});

test("disabledReason: Can* answers first, then the policy rule, then the device's state", () => {
    const free = model.gpuRows({ [GPU_PATH]: gpu() })[0];
    const managed = model.gpuRows({ [GPU_PATH]: gpu({ PolicyRule: "vdi", Role: "shard" }) })[0];
    const assigned = model.gpuRows({ [GPU_PATH]: gpu({ State: "vfio", Driver: "vfio-pci" }) })[0];
    assert.equal(model.disabledReason("assign", yes, free, {}), "");
    assert.match(model.disabledReason("assign", {}, free, {}), /^Checking/);
    assert.match(model.disabledReason("assign", { passthrough: "no" }, free, {}), /administrative access.*polkit rule/);
    assert.match(model.disabledReason("assign", { passthrough: "challenge" }, free, {}), /password/);
    assert.match(model.disabledReason("create", { shard: "no" }, free, { available: 3 }), /administrative access/);
    assert.match(model.disabledReason("assign", yes, managed, {}), /policy rule “vdi” \(role shard\)/);
    assert.match(model.disabledReason("return", yes, managed, {}), /vdi/);
    assert.match(model.disabledReason("create", yes, managed, { available: 2 }), /vdi/);
    assert.match(model.disabledReason("assign", yes, assigned, {}), /Already/);
    // Another engine's card: nothing, naming the owner; a named unmanaged rule and an
    // on-demand card's assign/return are allowed, as gpuvirtd allows them.
    const owned = model.gpuRows({ [GPU_PATH]: gpu({ PolicyRule: "k8s", Role: "unmanaged", Owner: "kubevirt" }) })[0];
    assert.match(model.disabledReason("create", yes, owned, { available: 2 }), /^Owned by kubevirt \(policy rule “k8s”\)/);
    assert.match(model.disabledReason("assign", yes, owned, {}), /through kubevirt/);
    const hands = model.gpuRows({ [GPU_PATH]: gpu({ PolicyRule: "lab", Role: "unmanaged", Owner: "gpuvirt" }) })[0];
    assert.equal(model.disabledReason("assign", yes, hands, {}), "");
    assert.equal(model.disabledReason("create", yes, hands, { available: 2 }), "");
    const onDemand = model.gpuRows({ [GPU_PATH]: gpu({ PolicyRule: "vm", Role: "passthrough", OnDemand: true }) })[0];
    assert.equal(model.disabledReason("assign", yes, onDemand, {}), "");
    assert.match(model.disabledReason("create", yes, onDemand, { available: 2 }), /policy rule “vm”/);
    assert.equal(model.disabledReason("return", yes, assigned, {}), "");
    assert.match(model.disabledReason("return", yes, free, {}), /on the host/);
    assert.match(model.disabledReason("assign", yes, model.gpuRows({ a: gpu({ BootVga: true }) })[0], {}), /boot/);
    assert.match(model.disabledReason("assign", yes, free, { group: { viable: false, problems: ["0000:41:00.1 is in use"] } }), /not viable: 0000:41:00.1 is in use/);
    assert.match(model.disabledReason("create", yes, free, { available: 0 }), /No instances/);
    assert.equal(model.disabledReason("apply", { policy: "yes" }), "");
    assert.match(model.disabledReason("reload", { policy: "no" }), /You may not/);
});

test("permissionBanner: only once all three answers are in and one is not yes", () => {
    assert.equal(model.permissionBanner({}, "none"), null);
    assert.equal(model.permissionBanner(yes, "none"), null);
    assert.match(model.permissionBanner({ passthrough: "no", shard: "no", policy: "no" }, "none").title, /limited access/);
    assert.match(model.permissionBanner({ passthrough: "no", shard: "no", policy: "challenge" }, "root").title, /Even with administrative access/);
    const partial = model.permissionBanner({ passthrough: "no", shard: "yes", policy: "no" }, "none");
    assert.equal(partial.title, "Not allowed for you: passthrough, the device policy.");
    assert.deepEqual(partial.denied, ["passthrough", "the device policy"]);
});

test("describeError: every documented error name has a hint; unknown names say so", () => {
    const names = ["NoSuchDevice", "PolicyViolation", "PolicyInvalid", "Busy", "GroupNotViable", "BootVga", "NotSupported",
        "UnknownType", "NoCapacity", "AlreadyExists", "TimedOut", "DriverBind"].map(n => "org.gpuvirt.GpuVirt1.Error." + n)
        .concat(["AccessDenied", "InteractiveAuthorizationRequired", "InvalidArgs", "ServiceUnknown", "NameHasNoOwner",
            "UnknownMethod", "UnknownObject", "NoReply"].map(n => "org.freedesktop.DBus.Error." + n));
    for (const name of names) {
        const d = model.describeError({ name, message: "m" });
        assert.ok(d.hint, "hint for " + name);
        assert.notEqual(d.title, "gpuvirtd refused the call", name);
    }
    const denied = model.describeError({ name: "org.freedesktop.DBus.Error.AccessDenied", message: "polkit is not running" });
    assert.match(denied.hint, /administrative access/);
    assert.match(denied.hint, /polkit rule/);
    assert.equal(model.describeError({ problem: "access-denied", message: "x" }).title, "You are not allowed to do this");
    const unknown = model.describeError({ name: "org.example.Weird", message: "odd" });
    assert.equal(unknown.title, "gpuvirtd refused the call");
    assert.equal(unknown.message, "odd");
    assert.equal(model.describeError(null), null);
    assert.match(model.errorHint("org.gpuvirt.GpuVirt1.Error.Busy"), /Stop the VM/);
});

test("planView: titles from the text, steps from the JSON; a bad JSON leaves the text", () => {
    const text = "1. create mdev u1 of type nvidia-300 (GRID V100-8C) on 0000:41:00.0\n   why: rule\n2. regenerate the initramfs\n   why: x\n";
    const json = JSON.stringify({
        actions: [
            { action: { kind: "create-mdev", parent: "0000:41:00.0", type_id: "nvidia-300", uuid: "u1" }, reason: "rule \"vdi\" wants 2", rule: "vdi", gpu: "0000:41:00.0",
                steps: [{ op: "write", path: "sys/class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-300/create", value: "u1" }] },
            { action: { kind: "regenerate-initramfs" }, reason: "the initramfs carries modprobe.d", rule: null, gpu: null, steps: [{ op: "run", argv: ["update-initramfs", "-u"] }] },
            { action: { kind: "write-boot-file", path: "etc/modprobe.d/gpuvirt.conf", contents: "blacklist nouveau\n" }, reason: "r", rule: null, gpu: null,
                steps: [{ op: "write-file", path: "etc/modprobe.d/gpuvirt.conf", contents: "x" }, { op: "sleep", ms: 5 }] },
        ],
        refusals: [{ kind: "boot-vga", gpu: "0000:00:02.0", rule: "all", message: "is the boot VGA" }],
        notes: ["plan again after applying"],
    });
    const v = model.planView(text, json);
    assert.equal(v.parsed, true);
    assert.equal(v.empty, false);
    assert.deepEqual(v.steps.map(s => s.title), [
        "create mdev u1 of type nvidia-300 (GRID V100-8C) on 0000:41:00.0",
        "regenerate the initramfs",
        "write boot file, path etc/modprobe.d/gpuvirt.conf",
    ]);
    assert.deepEqual(v.steps[0].operations, ['write "u1" to /sys/class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-300/create']);
    assert.deepEqual(v.steps[1].operations, ["run update-initramfs -u"]);
    assert.deepEqual(v.steps[2].operations, ["write the file /etc/modprobe.d/gpuvirt.conf", "sleep ms 5"]);
    assert.equal(v.steps[0].rule, "vdi");
    assert.equal(v.steps[1].rule, "");
    assert.deepEqual(v.refusals, [{ kind: "boot-vga", gpu: "0000:00:02.0", rule: "all", message: "is the boot VGA" }]);
    assert.deepEqual(v.notes, ["plan again after applying"]);
    assert.equal(model.planView("", JSON.stringify({ actions: [], refusals: [], notes: [] })).empty, true);
    const broken = model.planView("1. something", "{not json");
    assert.equal(broken.parsed, false);
    assert.equal(broken.text, "1. something");
});

test("jobView tolerates a partial first notify and says how it ended", () => {
    assert.deepEqual(
        (({ progress, finished, status, percent }) => ({ progress, finished, status, percent }))(model.jobView({ Operation: "assign 0000:41:00 to vfio-pci" })),
        { progress: 0, finished: false, status: "Running", percent: 0 });
    assert.equal(model.jobView({ Progress: 0.25 }).percent, 25);
    assert.equal(model.jobView({ Progress: 7 }).progress, 1, "clamped");
    assert.equal(model.jobView(undefined).status, "Running");
    const ok = model.jobView({ Finished: true, Success: true, Progress: 0.5, Message: "done: bind" });
    assert.deepEqual([ok.status, ok.percent, ok.message, ok.hint], ["Done", 100, "done: bind", ""]);
    const bad = model.jobView({ Finished: true, Success: false, ErrorName: "org.gpuvirt.GpuVirt1.Error.Busy", Message: "held by qemu" });
    assert.equal(bad.status, "Failed");
    assert.match(bad.hint, /Stop the VM/);
});

test("requests: the dialog shows exactly the call that is made", () => {
    const parent = { path: GPU_PATH, name: "0000:41:00.0" };
    const create = model.requests.create(parent, { id: "nvidia-300", name: "GRID V100-8C" });
    assert.deepEqual([create.path, create.method, create.signature, create.args], [GPU_PATH, "CreateMdev", "ssa{sv}", ["nvidia-300", "", {}]]);
    const v = model.requestView(create);
    assert.equal(v.call, 'ShardParent.CreateMdev("nvidia-300", "", {})');
    assert.equal(v.cli, "gpuvirtctl mdev create 0000:41:00.0 nvidia-300");
    const define = model.requests.define("0000:41:00.0", "nvidia-299", false);
    assert.deepEqual(define.args[3], { auto: { t: "b", v: false } });
    assert.equal(model.requestView(define).call, 'Manager.DefineMdev("0000:41:00.0", "nvidia-299", "", {"auto": <b false>})');
    assert.equal(model.requestView(define).cli, "gpuvirtctl mdev define 0000:41:00.0 nvidia-299 --manual");
    const def = { uuid: "1b5a0e3c-0f6e-4d4e-9d0a-3c8f1e1f2a3b", parent: "mtty", active: true };
    assert.equal(model.requestView(model.requests.start(def)).call, 'Manager.StartMdev("1b5a0e3c-0f6e-4d4e-9d0a-3c8f1e1f2a3b", {"parent": <s "mtty">})');
    assert.match(model.requests.undefine(def).summary, /stays/);
    const mdev = { path: "/org/gpuvirt/GpuVirt1/mdevs/x", uuid: "x", type: "nvidia-300", typeName: "", parent: "0000:41:00.0" };
    assert.equal(model.requestView(model.requests.remove(mdev)).call, "Mdev.Remove({})");
    assert.equal(model.requestView({ iface: "org.gpuvirt.GpuVirt1.Mdev", method: "Remove", args: [{}], cli: ["gpuvirtctl", "it's"] }).cli, "gpuvirtctl 'it'\\''s'");
    // Every request's action is one a Can* question guards.
    for (const action of Object.keys(model.requests)) assert.equal(model.ACTION_PERMISSION[action], "shard", action);
});

test("model.js stays free of the DOM and of cockpit", async () => {
    const { readFile } = await import("node:fs/promises");
    const src = await readFile(new URL("../../../cockpit/gpuvirt/model.js", import.meta.url), "utf8");
    const code = src.split("\n").filter(l => !/^\s*(\/\/|\*)/.test(l)).join("\n");
    assert.doesNotMatch(code, /\bdocument\.|\bwindow\.|\bcockpit\.|\bnavigator\./);
    assert.doesNotMatch(code, /^import /m, "model.js imports nothing");
});
