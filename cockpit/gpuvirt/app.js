// The page: tabs, rendering on every change of the live state, and the actions behind their
// confirmations. Reads come from client.js's state; words and verdicts from model.js; DOM
// from view.js.

/* global cockpit */
import * as model from "./model.js";
import { GpuvirtClient } from "./client.js";
import { $, el, renderBanners, renderOverview, renderGpu, renderVgpus, renderPolicy, renderPlan, openDialog, requestBlock, planBlock, showError } from "./view.js";

const VIEWS = ["overview", "gpu", "vgpus", "policy"];
const client = new GpuvirtClient(cockpit);
let view = "overview";
let selectedGpu = "";
let current = { gpu: null, group: null };

// ---------------------------------------------------------------- navigation (#/view[/address])

function readLocation() {
    const path = cockpit.location.path;
    view = VIEWS.includes(path[0]) ? path[0] : "overview";
    if (view === "gpu" && path[1]) selectedGpu = path[1];
    for (const b of document.querySelectorAll(".gv-tabs [role=tab]"))
        b.setAttribute("aria-selected", String(b.dataset.view === view));
    for (const s of document.querySelectorAll(".gv-view"))
        s.hidden = s.dataset.view !== view;
    render();
}

function go(v, address) {
    cockpit.location.go(address ? [v, address] : [v]);
}

for (const b of document.querySelectorAll(".gv-tabs [role=tab]"))
    b.addEventListener("click", () => go(b.dataset.view, b.dataset.view === "gpu" ? selectedGpu : ""));
cockpit.addEventListener("locationchanged", readLocation);
$("gpu-select").addEventListener("change", ev => go("gpu", ev.target.value));
$("error-close").addEventListener("click", () => { $("error").hidden = true });
$("reboot-go").addEventListener("click", () => cockpit.jump("/system"));
$("define-parent").addEventListener("change", render);

// ---------------------------------------------------------------- rendering

function reasonsForGpu(gpu, group) {
    const can = client.state.can;
    return {
        assign: model.disabledReason("assign", can, gpu, { group }),
        return: model.disabledReason("return", can, gpu, {}),
    };
}

function reasonFor(action, a, b) {
    const can = client.state.can;
    if (action === "create") {
        const gpu = model.gpuRows(client.state.gpus).find(g => g.path === a.path) || null;
        return model.disabledReason("create", can, gpu, { available: b.available });
    }
    if (action === "remove") return model.disabledReason("remove", can, null, {});
    if (action === "define") return model.disabledReason("define", can, null, {});
    return model.disabledReason(action, can, null, { definition: a });
}

function render() {
    const s = client.state;
    renderBanners(s);
    if (view === "overview") renderOverview(s);
    if (view === "gpu") {
        const gpuRow = model.gpuRows(s.gpus).find(g => g.address === selectedGpu) || model.gpuRows(s.gpus)[0] || null;
        const group = gpuRow ? model.groupView(gpuRow, s.groups) : null;
        current = renderGpu(s, gpuRow ? gpuRow.address : "", reasonsForGpu(gpuRow, group)) || { gpu: null, group: null };
        if (current.gpu) selectedGpu = current.gpu.address;
    }
    if (view === "vgpus") renderVgpus(s, reasonFor);
    if (view === "policy") {
        const can = s.can;
        renderPolicy(s, { apply: model.disabledReason("apply", can), reload: model.disabledReason("reload", can) });
    }
    // For tests and people alike: the page has its first full data set.
    const ready = s.ready && !!s.manager && Object.keys(s.can).length === 3 && s.superuser !== null;
    $("app").dataset.ready = String(ready);
}

client.onChange(render);

// ---------------------------------------------------------------- actions

async function withErrors(fn) {
    try { await fn() } catch (e) { showError(e) }
}

function passthroughAction(method) {
    const gpu = current.gpu;
    if (!gpu) return;
    const assign = method === "AssignPassthrough";
    withErrors(async () => {
        const plan = await client.dryRun(gpu.path, method);
        openDialog({
            title: assign ? "Give " + gpu.address + " to VMs" : "Return " + gpu.address + " to the host",
            body: planBlock(assign
                ? "Every function of the card's slot goes to vfio-pci, so a VM can take it. gpuvirtd's dry run plans:"
                : "The slot's functions go back to the drivers gpuvirt found on them. gpuvirtd's dry run plans:", plan),
            confirmLabel: assign ? "Give to VMs" : "Return to host",
            onConfirm: async ui => {
                const final = await client.startJob(gpu.path, method, props => ui.progress(model.jobView(props)));
                const j = model.jobView(final);
                ui.done(j.success, j.message || j.status, j.hint);
            },
        });
    });
}

$("assign").addEventListener("click", () => passthroughAction("AssignPassthrough"));
$("return").addEventListener("click", () => passthroughAction("ReturnToHost"));

function hostdevDialog(target) {
    withErrors(async () => {
        const { xml, args } = await client.renderHostdev(target);
        const qemu = args.join(" ");
        const copyButton = (text, label) => {
            const b = el("button", { type: "button", class: "gv-btn gv-btn-secondary gv-btn-small", dataset: { copy: label } }, "Copy");
            b.addEventListener("click", () => copy(text, b));
            return b;
        };
        openDialog({
            title: "Use " + target + " in a VM",
            body: [
                el("div", { class: "gv-copy-head" }, el("h3", {}, "libvirt <hostdev> XML"), copyButton(xml, "xml")),
                el("pre", { class: "gv-pre", id: "hostdev-xml" }, xml),
                el("div", { class: "gv-copy-head" }, el("h3", {}, "QEMU arguments"), copyButton(qemu, "qemu")),
                el("pre", { class: "gv-pre", id: "hostdev-qemu" }, args.join("\n")),
                el("p", { class: "gv-hint" }, "managed='no': the device stays as gpuvirt assigned it; give the card to VMs first."),
            ],
        });
    });
}

async function copy(text, button) {
    try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
    } catch (e) {
        // No clipboard permission (plain http, a policy): select the text for Ctrl+C instead.
        const pre = button.parentElement.nextElementSibling;
        const range = document.createRange();
        range.selectNodeContents(pre);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
    }
}

$("hostdev").addEventListener("click", () => current.gpu && hostdevDialog(current.gpu.address));

function requestDialog(title, req, confirmLabel, danger) {
    openDialog({
        title,
        body: requestBlock(req),
        confirmLabel,
        danger,
        onConfirm: async ui => {
            const reply = await client.request(req);
            const first = Array.isArray(reply) ? reply[0] : null;
            ui.done(true, typeof first === "string" && first ? req.method + " answered " + first : req.method + " succeeded.");
        },
    });
}

// Buttons inside tables are re-rendered on every change: one delegated listener.
document.addEventListener("click", ev => {
    const b = ev.target.closest("button[data-action]");
    if (!b || b.disabled || b.closest("#dialog")) return;
    const s = client.state;
    const action = b.dataset.action;
    if (action === "create") {
        const parent = model.typeTables(s.parents, s.gpus).find(t => t.path === b.dataset.parent);
        const type = parent && parent.types.find(t => t.id === b.dataset.type);
        if (parent && type) requestDialog("Create a vGPU", model.requests.create(parent, type), "Create");
    } else if (action === "remove") {
        const m = model.mdevRows(s.mdevs).find(r => r.path === b.dataset.path);
        if (m) requestDialog("Remove vGPU " + m.uuid, model.requests.remove(m), "Remove", true);
    } else if (action === "hostdev") {
        hostdevDialog(b.dataset.target);
    } else if (["start", "stop", "undefine"].includes(action)) {
        const d = model.definitionRows(s.definitions).find(r => r.uuid === b.dataset.uuid && r.parent === b.dataset.parent);
        if (!d) return;
        const titles = { start: ["Start vGPU", "Start"], stop: ["Stop vGPU", "Stop"], undefine: ["Undefine vGPU", "Undefine"] };
        requestDialog(titles[action][0] + " " + d.uuid, model.requests[action](d), titles[action][1], action !== "start");
    }
});

$("define").addEventListener("submit", ev => {
    ev.preventDefault();
    if ($("define-submit").disabled) return;
    const parent = $("define-parent").value;
    const type = $("define-type").value;
    if (!parent || !type) return;
    requestDialog("Define a persistent vGPU", model.requests.define(parent, type, $("define-auto").checked), "Define");
});

$("apply").addEventListener("click", () => withErrors(async () => {
    const plan = await client.refreshPlan();
    if (plan.error) throw plan.error;
    const body = [el("p", {}, "gpuvirtd applies the policy now (in monitor mode too). It plans:"), el("div", { class: "gv-dialog-plan" })];
    renderPlan(body[1], plan);
    openDialog({
        title: "Apply the device policy",
        body,
        confirmLabel: "Apply",
        onConfirm: async ui => {
            const { ok, report } = await client.reconcile();
            ui.done(ok, report || (ok ? "Nothing to do." : "The apply failed."));
        },
    });
}));

$("reload").addEventListener("click", () => {
    const p = model.policyView(client.state.manager);
    openDialog({
        title: "Reload the policy file",
        body: [el("p", {}, "gpuvirtd re-reads " + (p ? p.path : "its policy file") + " and applies it as its enforcement mode says. An invalid file is refused and the previous policy stays in force."),
            el("pre", { class: "gv-pre gv-request" }, "Manager.ReloadPolicy({})")],
        confirmLabel: "Reload",
        onConfirm: async ui => {
            await client.reloadPolicy();
            ui.done(true, "The policy was reloaded; the plan below is the new one.");
        },
    });
});

readLocation();
