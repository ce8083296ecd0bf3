// The view model: plain data from gpuvirtd's D-Bus objects in, plain rows, verdicts and words
// out. No DOM and no `cockpit` here, so `node --test tests/cockpit/unit` checks all of it.
//
// Inputs are what client.js hands over: property dictionaries as cockpit.dbus decodes them
// (structs as arrays, a{s(sssu)} as an object of arrays), keyed by object path.

export const BUS_NAME = "org.gpuvirt.GpuVirt1";
export const ROOT_PATH = "/org/gpuvirt/GpuVirt1";
export const MANAGER_PATH = ROOT_PATH + "/Manager";
export const IFACE = {
    manager: BUS_NAME + ".Manager",
    gpu: BUS_NAME + ".Gpu",
    group: BUS_NAME + ".IommuGroup",
    parent: BUS_NAME + ".ShardParent",
    mdev: BUS_NAME + ".Mdev",
    job: BUS_NAME + ".Job",
};

// Which Can* question guards which action (docs/security.md, "polkit actions").
export const ACTION_PERMISSION = {
    assign: "passthrough",
    return: "passthrough",
    create: "shard",
    remove: "shard",
    define: "shard",
    start: "shard",
    stop: "shard",
    undefine: "shard",
    apply: "policy",
    reload: "policy",
};

export const PERMISSION_METHOD = {
    passthrough: "CanPassthrough",
    shard: "CanShard",
    policy: "CanManagePolicy",
};

const ADMIN_HINT = "Turn on administrative access (the lock at the top of Cockpit), or ask for a " +
    "polkit rule that allows it (see gpuvirt's docs/security.md).";

// Error names (docs/cli.md, "Error messages") → what it means and what to do. The one place
// the page turns a refusal into advice.
const ERROR_HINTS = {
    "org.gpuvirt.GpuVirt1.Error.NoSuchDevice": ["No such device", "The device may have gone; the page follows the inventory and shows what is there now."],
    "org.gpuvirt.GpuVirt1.Error.PolicyViolation": ["The device policy forbids this", "Change the policy rule that manages this device if this is intended (Policy tab)."],
    "org.gpuvirt.GpuVirt1.Error.PolicyInvalid": ["The policy file is not valid", "Fix the file (gpuvirt-policy(5)) and reload it; the previous policy stays in force."],
    "org.gpuvirt.GpuVirt1.Error.Busy": ["The device is in use", "Stop the VM or process holding it, then retry."],
    "org.gpuvirt.GpuVirt1.Error.GroupNotViable": ["The IOMMU group holds devices the host still uses", "See the IOMMU group on the GPU tab: move the card or hand over the whole group."],
    "org.gpuvirt.GpuVirt1.Error.BootVga": ["This is the host's boot/display GPU", "Give the host another display first."],
    "org.gpuvirt.GpuVirt1.Error.NotSupported": ["The device or kernel cannot do this", "Check the host health on the Overview tab (`gpuvirtctl doctor`)."],
    "org.gpuvirt.GpuVirt1.Error.UnknownType": ["The parent offers no such vGPU type", "Pick one of the types listed for this parent."],
    "org.gpuvirt.GpuVirt1.Error.NoCapacity": ["No instances of that type are left", "Remove a vGPU or pick a smaller type."],
    "org.gpuvirt.GpuVirt1.Error.AlreadyExists": ["An mdev with that UUID exists", "Pick another UUID, or leave it empty to generate one."],
    "org.gpuvirt.GpuVirt1.Error.TimedOut": ["The kernel did not finish in time", "Check `journalctl -u gpuvirtd` and the device's holders, then retry."],
    "org.gpuvirt.GpuVirt1.Error.DriverBind": ["Binding or unbinding a driver failed", "See `journalctl -u gpuvirtd` and `dmesg`."],
    "org.freedesktop.DBus.Error.AccessDenied": ["You are not allowed to do this", ADMIN_HINT],
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": ["This needs authorization, and no one could be asked", ADMIN_HINT],
    "org.freedesktop.DBus.Error.InvalidArgs": ["An argument is not valid", "The message names the argument; correct it."],
    "org.freedesktop.DBus.Error.ServiceUnknown": ["gpuvirtd is not running", "Start it: `systemctl start gpuvirtd`."],
    "org.freedesktop.DBus.Error.NameHasNoOwner": ["gpuvirtd is not running", "Start it: `systemctl start gpuvirtd`."],
    "org.freedesktop.DBus.Error.UnknownMethod": ["The running gpuvirtd does not know this call", "The page and the daemon differ in version; restart gpuvirtd after an upgrade."],
    "org.freedesktop.DBus.Error.UnknownObject": ["The object is gone", "The device disappeared; the page shows what is there now."],
    "org.freedesktop.DBus.Error.NoReply": ["gpuvirtd did not answer in time", "Check `systemctl status gpuvirtd`."],
};

// Cockpit's own problem codes (cockpit dbus clients close with these instead of a D-Bus name).
const PROBLEM_HINTS = {
    "access-denied": ["You are not allowed to do this", ADMIN_HINT],
    "not-found": ["gpuvirtd is not running", "Start it: `systemctl start gpuvirtd`."],
    "disconnected": ["The connection to the machine was lost", "Reload the page."],
    "terminated": ["The connection to the machine was closed", "Reload the page."],
};

/** An error from a call or a job → {title, message, hint, name}, for the error banner. */
export function describeError(error) {
    if (!error) return null;
    const name = error.name || error.problem || "";
    const message = error.message || String(error);
    const known = ERROR_HINTS[name] || PROBLEM_HINTS[error.problem] || PROBLEM_HINTS[name];
    if (known) return { title: known[0], message, hint: known[1], name };
    return { title: "gpuvirtd refused the call", message, hint: "", name };
}

/** The hint for an error name alone (for a job's ErrorName). */
export function errorHint(name) {
    return (ERROR_HINTS[name] || ["", ""])[1];
}

// ---------------------------------------------------------------- helpers

const str = v => (v === undefined || v === null) ? "" : String(v);
const list = v => Array.isArray(v) ? v : [];
const isPath = p => typeof p === "string" && p !== "" && p !== "/";

function byKey(key) {
    return (a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0);
}

/** PCI class code (u32 0x030200) → "030200", as gpuvirtctl prints it. */
export function classHex(code) {
    return (Number(code) >>> 0).toString(16).padStart(6, "0");
}

/** A few class codes in words (the GPU and its usual slot companions). */
export function className(code) {
    const hex = classHex(code);
    const names = {
        "0300": "VGA controller",
        "0302": "3D controller",
        "0380": "Display controller",
        "0403": "Audio device",
        "0c03": "USB controller",
        "0c80": "Serial bus controller",
        "0200": "Ethernet controller",
        "0604": "PCI bridge",
        "0600": "Host bridge",
    };
    return names[hex.slice(0, 4)] || "Class " + hex;
}

// ---------------------------------------------------------------- host health

/** Manager properties → rows of {key, label, value, ok, details[]} for the host card. */
export function healthRows(manager) {
    if (!manager) return [];
    const m = manager;
    const warnings = list(m.ScanWarnings);
    return [
        { key: "iommu", label: "IOMMU", ok: !!m.IommuEnabled, value: m.IommuEnabled ? "enabled" : "not enabled", details: list(m.IommuReasons) },
        { key: "vfio", label: "vfio-pci", ok: !!m.VfioAvailable, value: m.VfioAvailable ? "available" : "not available", details: [] },
        { key: "mdev", label: "Mediated devices", ok: !!m.MdevAvailable, value: m.MdevAvailable ? "available" : "not available", details: [] },
        { key: "kernel", label: "Kernel", ok: true, value: str(m.KernelRelease) || "unknown", details: [] },
        { key: "daemon", label: "gpuvirtd", ok: true, value: str(m.Version) ? "version " + m.Version : "running", details: [] },
        { key: "scan", label: "Scan warnings", ok: warnings.length === 0, value: warnings.length === 0 ? "none" : String(warnings.length), details: warnings },
    ];
}

/** The reboot-required banner: null, or {title, reasons[]}. */
export function rebootBanner(manager) {
    if (!manager || !manager.RebootRequired) return null;
    return {
        title: "A reboot is required for changes to take effect",
        reasons: list(manager.RebootReasons),
    };
}

// ---------------------------------------------------------------- GPUs and groups

/** Gpu property dictionaries (by path) → table rows, sorted by PCI address. */
export function gpuRows(gpus) {
    return Object.entries(gpus || {}).map(([path, g]) => {
        const total = Number(g.SriovTotalVfs || 0);
        const num = Number(g.SriovNumVfs || 0);
        return {
            path,
            address: str(g.PciAddress),
            vendor: str(g.VendorName),
            product: str(g.ProductName),
            name: [str(g.VendorName), str(g.ProductName)].filter(Boolean).join(" "),
            driver: str(g.Driver),
            state: str(g.State),
            role: str(g.Role),
            policyRule: str(g.PolicyRule),
            owner: str(g.Owner),
            onDemand: !!g.OnDemand,
            numa: (g.NumaNode === undefined || Number(g.NumaNode) < 0) ? "" : String(g.NumaNode),
            resetMethods: list(g.ResetMethods).join(", "),
            sriov: total > 0 ? num + " of " + total + " VFs" : "",
            bootVga: !!g.BootVga,
            group: isPath(g.IommuGroup) ? g.IommuGroup : "",
            companions: list(g.Companions),
            virtualFunctions: list(g.VirtualFunctions),
            physicalFunction: str(g.PhysicalFunction),
            kernelModules: list(g.KernelModules),
            drmRender: str(g.DrmRenderNodeByPath) || str(g.DrmRenderNode),
        };
    }).sort(byKey("address"));
}

/** One GPU's IOMMU group → {id, viable, verdict, problems[], members[]}, or null. */
export function groupView(gpuRow, groups) {
    if (!gpuRow || !gpuRow.group) return null;
    const g = (groups || {})[gpuRow.group];
    if (!g) return null;
    const viable = !!g.Viable;
    const problems = list(g.ViabilityProblems);
    return {
        path: gpuRow.group,
        id: Number(g.Id),
        viable,
        verdict: viable
            ? "Viable: every member can go to a VM together."
            : "Not viable: this group cannot be passed through as it is.",
        problems,
        members: list(g.Members).map(([name, cls, driver]) => ({
            name: str(name),
            classCode: classHex(cls),
            className: className(cls),
            driver: str(driver) || "(none)",
            isGpu: name === gpuRow.address,
        })).sort(byKey("name")),
    };
}

// ---------------------------------------------------------------- vGPUs

/** ShardParent dictionaries → [{path, name, backend, types[{id, name, description, api, available}]}]. */
export function typeTables(parents, gpus) {
    return Object.entries(parents || {}).map(([path, p]) => {
        const gpu = (gpus || {})[path];
        return {
            path,
            name: str(p.Name),
            label: gpu ? str(gpu.PciAddress) + " " + str(gpu.ProductName) : str(p.Name),
            backend: str(p.Backend),
            policyRule: gpu ? str(gpu.PolicyRule) : "",
            children: list(p.Children).length,
            types: Object.entries(p.Types || {}).map(([id, t]) => ({
                id,
                name: str(t[0]),
                description: str(t[1]),
                api: str(t[2]),
                available: Number(t[3] || 0),
            })).sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true })),
        };
    }).sort(byKey("name"));
}

/** Mdev dictionaries → rows sorted by parent, then UUID. */
export function mdevRows(mdevs) {
    return Object.entries(mdevs || {}).map(([path, m]) => ({
        path,
        uuid: str(m.Uuid),
        parent: str(m.ParentName),
        parentPath: str(m.Parent),
        type: str(m.Type),
        typeName: str(m.TypeName),
        active: !!m.Active,
        driver: str(m.Driver),
        group: Number(m.IommuGroupId) >= 0 ? String(m.IommuGroupId) : "",
    })).sort((a, b) => (a.parent + a.uuid).localeCompare(b.parent + b.uuid));
}

/** ListMdevDefinitions' rows a(sssssa(ss)b) → objects; mdevctl's are read-only here. */
export function definitionRows(defs) {
    return list(defs).map(([uuid, parent, type, owner, start, attrs, active]) => ({
        uuid: str(uuid),
        parent: str(parent),
        type: str(type),
        owner: str(owner),
        start: str(start),
        attrs: list(attrs).map(([k, v]) => k + "=" + v),
        active: !!active,
        readOnly: owner !== "gpuvirt",
        readOnlyReason: owner !== "gpuvirt" ? "Defined in mdevctl's own files (/etc/mdevctl.d): change it with mdevctl." : "",
    }));
}

// ---------------------------------------------------------------- policy and plans

/** Manager properties → the policy card. */
export function policyView(manager) {
    if (!manager) return null;
    return {
        path: str(manager.PolicyPath) || "(none)",
        mode: str(manager.EnforcementMode) || "(none)",
        error: str(manager.PolicyError),
        lastApply: str(manager.LastApply) || "never",
        drift: list(manager.Drift),
    };
}

function describeStep(step) {
    if (!step || typeof step !== "object") return str(step);
    const op = str(step.op);
    if (op === "write") return "write " + JSON.stringify(str(step.value)) + " to /" + str(step.path);
    if (op === "write-file") return "write the file /" + str(step.path);
    if (op === "remove-file") return "remove the file /" + str(step.path);
    if (op === "run") return "run " + list(step.argv).join(" ");
    const rest = Object.entries(step).filter(([k]) => k !== "op")
        .map(([k, v]) => k + " " + (typeof v === "string" ? v : JSON.stringify(v)));
    return [op].concat(rest).join(" ");
}

function describeAction(action) {
    if (!action || typeof action !== "object") return "";
    const kind = str(action.kind);
    const rest = Object.entries(action).filter(([k]) => k !== "kind" && k !== "contents")
        .map(([k, v]) => k.replace(/_/g, " ") + " " + (typeof v === "string" ? v : JSON.stringify(v)));
    return [kind.replace(/-/g, " ")].concat(rest).join(", ");
}

/**
 * PlanPolicy's (text, json) → {empty, steps[{title, reason, rule, gpu, kind, operations[]}],
 * refusals[{gpu, rule, message, kind}], notes[]}. Titles come from the daemon's own numbered
 * text lines (`1. create mdev ...`), the rest from the JSON; a JSON that does not parse
 * leaves only the text.
 */
export function planView(text, json) {
    let plan = null;
    try { plan = json ? JSON.parse(json) : null } catch (e) { plan = null }
    const titles = [];
    for (const line of str(text).split("\n")) {
        const m = /^(\d+)\. (.*)$/.exec(line);
        if (m) titles[Number(m[1]) - 1] = m[2];
    }
    if (!plan || typeof plan !== "object") {
        return { parsed: false, empty: str(text).trim() === "", steps: [], refusals: [], notes: [], text: str(text) };
    }
    const steps = list(plan.actions).map((a, i) => ({
        title: titles[i] || describeAction(a.action),
        kind: str(a.action && a.action.kind),
        reason: str(a.reason),
        rule: str(a.rule),
        gpu: str(a.gpu),
        operations: list(a.steps).map(describeStep),
    }));
    const refusals = list(plan.refusals).map(r => ({
        kind: str(r.kind), gpu: str(r.gpu), rule: str(r.rule), message: str(r.message),
    }));
    const notes = list(plan.notes).map(str);
    return { parsed: true, empty: steps.length === 0 && refusals.length === 0, steps, refusals, notes, text: str(text) };
}

// ---------------------------------------------------------------- who may do what

/**
 * Why an action is not available now, or "" when it is. `can` holds the Can* answers
 * ({passthrough, shard, policy}: "yes" | "challenge" | "no" | undefined while asking);
 * `gpu` is a gpuRow for the card actions; `extra` holds action-specific facts.
 */
export function disabledReason(action, can, gpu, extra) {
    const perm = ACTION_PERMISSION[action];
    const answer = perm ? (can || {})[perm] : "yes";
    if (answer === undefined || answer === null || answer === "")
        return "Checking whether you may do this…";
    if (answer === "challenge")
        return "gpuvirt would first have to ask for your password, which this page cannot do. " + ADMIN_HINT;
    if (answer !== "yes")
        return "You may not do this. " + ADMIN_HINT;
    const x = extra || {};
    const manual = action === "assign" || action === "return" || action === "create";
    // As gpuvirtd decides (docs/policy.md): another owner's card takes nothing; a rule with
    // role unmanaged takes everything; an on-demand passthrough card takes assign and return.
    if (gpu && manual && gpu.owner && gpu.owner !== "gpuvirt")
        return "Owned by " + gpu.owner + " (policy rule \u201c" + gpu.policyRule +
            "\u201d): gpuvirt only observes this card. Make the change through " + gpu.owner + ".";
    const allowed = gpu && (gpu.role === "unmanaged" ||
        (gpu.onDemand && (action === "assign" || action === "return")));
    if (gpu && gpu.policyRule && manual && !allowed)
        return "Managed by policy rule \u201c" + gpu.policyRule + "\u201d (role " + (gpu.role || "?") +
            "): gpuvirt refuses manual changes to it. Change the policy to change this card.";
    if (action === "assign") {
        if (gpu && gpu.state === "vfio") return "Already given to VMs (bound to vfio-pci).";
        if (gpu && gpu.bootVga) return "This is the host's boot/display GPU.";
        if (x.group && !x.group.viable) return "Its IOMMU group is not viable: " + (x.group.problems.join("; ") || "see the group below") + ".";
    }
    if (action === "return" && gpu && gpu.state !== "vfio") return "Not given to VMs: it is on the host.";
    if (action === "create" && x.available === 0) return "No instances of this type are left.";
    if ((action === "start" || action === "stop" || action === "undefine") && x.definition && x.definition.readOnly)
        return x.definition.readOnlyReason;
    if (action === "start" && x.definition && x.definition.active) return "Already running.";
    if (action === "stop" && x.definition && !x.definition.active) return "Not running.";
    return "";
}

/** The banner that says why actions are greyed out, or null when everything is allowed. */
export function permissionBanner(can, superuser) {
    const perms = ["passthrough", "shard", "policy"];
    const answers = perms.map(p => can && can[p]);
    if (answers.some(a => a === undefined || a === null)) return null;
    if (answers.every(a => a === "yes")) return null;
    const words = { passthrough: "passthrough", shard: "vGPUs", policy: "the device policy" };
    const denied = perms.filter(p => can[p] !== "yes").map(p => words[p]);
    const admin = superuser && superuser !== "none" && superuser !== "init";
    let title;
    if (denied.length === perms.length)
        title = admin ? "Even with administrative access, gpuvirt allows you none of its actions."
            : "You are browsing with limited access: gpuvirt's actions are disabled.";
    else
        title = "Not allowed for you: " + denied.join(", ") + (admin ? " (even with administrative access)." : ".");
    return { title, hint: ADMIN_HINT, denied };
}

// ---------------------------------------------------------------- jobs and requests

/** A Job's properties (possibly partial, as the first notify can be) → progress view. */
export function jobView(props) {
    const p = props || {};
    const finished = !!p.Finished;
    const progress = Math.max(0, Math.min(1, Number(p.Progress || 0)));
    const success = finished && !!p.Success;
    let status = finished ? (success ? "Done" : "Failed") : "Running";
    return {
        operation: str(p.Operation),
        progress: finished ? 1 : progress,
        percent: Math.round((finished ? 1 : progress) * 100),
        finished,
        success,
        status,
        errorName: str(p.ErrorName),
        message: str(p.Message),
        hint: finished && !success ? errorHint(str(p.ErrorName)) : "",
    };
}

const shellQuote = s => /^[A-Za-z0-9_.:\/=-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";

function variantText(v) {
    if (v && typeof v === "object" && "t" in v && "v" in v) return "<" + v.t + " " + JSON.stringify(v.v) + ">";
    return JSON.stringify(v);
}

/**
 * The exact request a vGPU action makes (these have no dry run): shown in its confirmation.
 * → {summary, call: "Interface.Method(args)", path, cli: the gpuvirtctl equivalent}.
 */
export function requestView(req) {
    const args = list(req.args).map(a => {
        if (a && typeof a === "object" && !Array.isArray(a)) {
            const entries = Object.entries(a);
            return "{" + entries.map(([k, v]) => JSON.stringify(k) + ": " + variantText(v)).join(", ") + "}";
        }
        return JSON.stringify(a);
    });
    const iface = str(req.iface).replace(BUS_NAME + ".", "");
    return {
        summary: str(req.summary),
        path: str(req.path),
        call: iface + "." + str(req.method) + "(" + args.join(", ") + ")",
        cli: list(req.cli).map(shellQuote).join(" "),
    };
}

// The requests themselves, one builder per vGPU action, so the dialog and the call agree.
export const requests = {
    create(parent, type) {
        return {
            summary: "Create one " + (type.name || type.id) + " vGPU on " + parent.name + " now (not persistent).",
            path: parent.path, iface: IFACE.parent, method: "CreateMdev", signature: "ssa{sv}",
            args: [type.id, "", {}],
            cli: ["gpuvirtctl", "mdev", "create", parent.name, type.id],
        };
    },
    remove(mdev) {
        return {
            summary: "Remove the vGPU " + mdev.uuid + " (" + (mdev.typeName || mdev.type) + " on " + mdev.parent + "). A VM using it loses it.",
            path: mdev.path, iface: IFACE.mdev, method: "Remove", signature: "a{sv}",
            args: [{}],
            cli: ["gpuvirtctl", "mdev", "remove", mdev.uuid],
        };
    },
    define(parent, typeId, auto) {
        return {
            summary: "Define a persistent vGPU of type " + typeId + " on " + parent + (auto ? ", started now and at every boot." : ", started only on request."),
            path: MANAGER_PATH, iface: IFACE.manager, method: "DefineMdev", signature: "sssa{sv}",
            args: [parent, typeId, "", { auto: { t: "b", v: !!auto } }],
            cli: ["gpuvirtctl", "mdev", "define", parent, typeId].concat(auto ? [] : ["--manual"]),
        };
    },
    start(def) {
        return {
            summary: "Start the defined vGPU " + def.uuid + " on " + def.parent + ".",
            path: MANAGER_PATH, iface: IFACE.manager, method: "StartMdev", signature: "sa{sv}",
            args: [def.uuid, { parent: { t: "s", v: def.parent } }],
            cli: ["gpuvirtctl", "mdev", "start", "-u", def.uuid, "-p", def.parent],
        };
    },
    stop(def) {
        return {
            summary: "Stop the vGPU " + def.uuid + " on " + def.parent + "; its definition stays. A VM using it loses it.",
            path: MANAGER_PATH, iface: IFACE.manager, method: "StopMdev", signature: "sa{sv}",
            args: [def.uuid, {}],
            cli: ["gpuvirtctl", "mdev", "stop", def.uuid],
        };
    },
    undefine(def) {
        return {
            summary: "Drop the definition of " + def.uuid + " on " + def.parent + (def.active ? "; the running vGPU stays, as a transient one." : "."),
            path: MANAGER_PATH, iface: IFACE.manager, method: "UndefineMdev", signature: "sa{sv}",
            args: [def.uuid, { parent: { t: "s", v: def.parent } }],
            cli: ["gpuvirtctl", "mdev", "undefine", def.uuid],
        };
    },
};

/** The parents a definition may name, with their types, for the define form. */
export function defineChoices(tables) {
    return list(tables).filter(t => t.backend === "mdev" || t.backend === "")
        .map(t => ({ parent: t.name, label: t.label, types: t.types.map(ty => ({ id: ty.id, label: ty.id + " (" + ty.name + ")" })) }));
}
