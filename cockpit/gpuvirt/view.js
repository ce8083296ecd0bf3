// DOM rendering of the view model: builds rows, cards and dialogs from model.js's plain
// output. Knows nothing of D-Bus; app.js decides what to render when and wires the buttons.

import * as model from "./model.js";

export const $ = id => document.getElementById(id);

/** el("td", {class: "x", dataset: {uuid}}, "text", node, ...) */
export function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") node.className = v;
        else if (k === "dataset") Object.assign(node.dataset, v);
        else if (k === "text") node.textContent = v;
        else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
        if (c === undefined || c === null || c === false) continue;
        node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
}

function fill(parent, nodes) {
    parent.replaceChildren(...nodes);
}

function fact(label, value, opts) {
    const o = opts || {};
    const dd = el("dd", { class: o.ok === false ? "gv-bad" : o.ok === true ? "gv-good" : "" }, value || "—");
    if (o.details && o.details.length) dd.append(el("ul", { class: "gv-details" }, o.details.map(d => el("li", {}, d))));
    return [el("dt", {}, label), dd];
}

/** An action button: disabled with its reason as the tooltip (and aria-description). */
export function actionButton(label, action, reason, attrs) {
    const a = Object.assign({ type: "button", class: "gv-btn gv-btn-secondary gv-btn-small" }, attrs || {});
    a.dataset = Object.assign({ action }, a.dataset || {});
    const b = el("button", a, label);
    setReason(b, reason);
    return b;
}

export function setReason(button, reason) {
    button.disabled = !!reason;
    if (reason) button.title = reason;
    else button.removeAttribute("title");
    button.dataset.why = reason || "";
}

const badge = (text, kind) => el("span", { class: "gv-badge gv-badge-" + (kind || "plain") }, text);

function stateBadge(state) {
    return badge(state || "unknown", state === "vfio" ? "vfio" : state === "host" ? "host" : "plain");
}

// ---------------------------------------------------------------- banners

export function renderBanners(state) {
    const daemon = $("daemon");
    if (state.closed) {
        const d = model.describeError(state.closedError || { problem: state.closed, message: "The D-Bus connection to org.gpuvirt.GpuVirt1 closed (" + state.closed + ")." });
        fill(daemon, [el("strong", {}, d.title), el("p", {}, d.message), el("p", { class: "gv-hint" }, d.hint)]);
        daemon.hidden = false;
    } else {
        daemon.hidden = true;
    }
    const reboot = model.rebootBanner(state.manager);
    $("reboot").hidden = !reboot;
    if (reboot) {
        $("reboot-title").textContent = reboot.title;
        fill($("reboot-reasons"), reboot.reasons.map(r => el("li", {}, r)));
    }
    const perm = model.permissionBanner(state.can, state.superuser);
    $("permission").hidden = !perm;
    if (perm) fill($("permission"), [el("strong", {}, perm.title), " ", perm.hint]);
}

export function showError(error) {
    const d = model.describeError(error);
    if (!d) { $("error").hidden = true; return }
    $("error-title").textContent = d.title;
    $("error-message").textContent = d.message + (d.name ? " (" + d.name + ")" : "");
    $("error-hint").textContent = d.hint;
    $("error").hidden = false;
}

// ---------------------------------------------------------------- overview

export function renderOverview(state) {
    fill($("health"), model.healthRows(state.manager).flatMap(r => fact(r.label, r.value, { ok: r.key === "kernel" || r.key === "daemon" ? undefined : r.ok, details: r.details })));
    const rows = model.gpuRows(state.gpus);
    fill($("gpus").tBodies[0], rows.map(g => el("tr", { dataset: { path: g.path, address: g.address } },
        el("td", { "data-label": "Address" }, el("a", { href: "#/gpu/" + g.address, class: "gv-mono" }, g.address), g.bootVga ? [" ", badge("boot VGA")] : null),
        el("td", { "data-label": "Name" }, el("span", { class: "gv-vendor" }, g.vendor), " ", g.product),
        el("td", { "data-label": "Driver", class: "gv-driver" }, g.driver || "(none)"),
        el("td", { "data-label": "State" }, stateBadge(g.state)),
        el("td", { "data-label": "Role" }, g.role),
        el("td", { "data-label": "Policy rule" }, g.policyRule || "—"),
        el("td", { "data-label": "NUMA" }, g.numa || "—"),
        el("td", { "data-label": "Reset" }, g.resetMethods || "—"),
        el("td", { "data-label": "SR-IOV" }, g.sriov || "—"),
    )));
    $("gpus-empty").hidden = rows.length > 0 || !state.ready;
}

// ---------------------------------------------------------------- one GPU

export function renderGpu(state, selected, reasons) {
    const rows = model.gpuRows(state.gpus);
    const select = $("gpu-select");
    const want = rows.map(g => g.address).join(",");
    if (select.dataset.options !== want) {
        fill(select, rows.map(g => el("option", { value: g.address }, g.address + " " + g.product)));
        select.dataset.options = want;
    }
    const gpu = rows.find(g => g.address === selected) || rows[0];
    if (!gpu) {
        $("gpu-title").textContent = "No GPU";
        fill($("gpu-facts"), []);
        return null;
    }
    select.value = gpu.address;
    $("gpu-title").textContent = gpu.address + " " + gpu.product;
    fill($("gpu-facts"), [
        ...fact("Vendor", gpu.vendor),
        ...fact("Driver", gpu.driver || "(none)"),
        ...fact("State", gpu.state),
        ...fact("Role", gpu.role),
        ...fact("Policy rule", gpu.policyRule || "none (manual control)"),
        ...fact("Kernel modules", gpu.kernelModules.join(", ")),
        ...fact("NUMA node", gpu.numa),
        ...fact("Reset methods", gpu.resetMethods || "none reported"),
        ...fact("SR-IOV", gpu.sriov || "no"),
        ...(gpu.companions.length ? fact("Slot companions", gpu.companions.join(", ")) : []),
        ...(gpu.physicalFunction ? fact("Physical function", gpu.physicalFunction) : []),
        ...(gpu.drmRender ? fact("DRM render node", gpu.drmRender) : []),
    ]);
    setReason($("assign"), reasons.assign);
    setReason($("return"), reasons.return);
    const why = [];
    if (reasons.assign) why.push(el("li", {}, el("strong", {}, "Give to VMs: "), reasons.assign));
    if (reasons.return) why.push(el("li", {}, el("strong", {}, "Return to host: "), reasons.return));
    fill($("gpu-why"), why);

    const group = model.groupView(gpu, state.groups);
    if (!group) {
        $("group-title").textContent = "IOMMU group";
        $("group-verdict").textContent = "This GPU has no IOMMU group: the IOMMU is off or the device is not isolated.";
        $("group-verdict").className = "gv-verdict gv-bad";
        fill($("group-problems"), []);
        fill($("group-members").tBodies[0], []);
    } else {
        $("group-title").textContent = "IOMMU group " + group.id;
        $("group-verdict").textContent = group.verdict;
        $("group-verdict").className = "gv-verdict " + (group.viable ? "gv-good" : "gv-bad");
        fill($("group-problems"), group.problems.map(p => el("li", {}, p)));
        fill($("group-members").tBodies[0], group.members.map(m => el("tr", { class: m.isGpu ? "gv-current" : "" },
            el("td", { "data-label": "Function", class: "gv-mono" }, m.name),
            el("td", { "data-label": "Class" }, m.className + " (" + m.classCode + ")"),
            el("td", { "data-label": "Driver" }, m.driver))));
    }
    return { gpu, group };
}

// ---------------------------------------------------------------- vGPUs

export function renderVgpus(state, reasonFor) {
    const tables = model.typeTables(state.parents, state.gpus);
    fill($("types"), tables.map(t => el("div", { class: "gv-parent", dataset: { parent: t.name } },
        el("h3", {}, t.label, " ", badge(t.backend || "mdev"), t.policyRule ? [" ", badge("policy rule " + t.policyRule, "warn")] : null),
        el("div", { class: "gv-table-wrap" }, el("table", { class: "gv-table gv-types" },
            el("thead", {}, el("tr", {}, el("th", {}, "Type"), el("th", {}, "Name"), el("th", {}, "Available"), el("th", {}, "Description"), el("th", {}, el("span", { class: "gv-sr" }, "Actions")))),
            el("tbody", {}, t.types.map(ty => el("tr", { dataset: { type: ty.id } },
                el("td", { "data-label": "Type", class: "gv-mono" }, ty.id),
                el("td", { "data-label": "Name" }, ty.name),
                el("td", { "data-label": "Available", class: "gv-available" }, String(ty.available)),
                el("td", { "data-label": "Description", class: "gv-desc" }, ty.description),
                el("td", { class: "gv-row-actions" }, actionButton("Create", "create", reasonFor("create", t, ty), { dataset: { parent: t.path, type: ty.id } })),
            ))))))));
    $("types-empty").hidden = tables.length > 0 || !state.ready;

    const mdevs = model.mdevRows(state.mdevs);
    fill($("mdevs").tBodies[0], mdevs.map(m => el("tr", { dataset: { uuid: m.uuid } },
        el("td", { "data-label": "UUID", class: "gv-mono" }, m.uuid),
        el("td", { "data-label": "Parent", class: "gv-mono" }, m.parent),
        el("td", { "data-label": "Type" }, m.type, m.typeName ? " (" + m.typeName + ")" : ""),
        el("td", { "data-label": "Driver" }, m.driver || "(none)"),
        el("td", { "data-label": "IOMMU group" }, m.group || "—"),
        el("td", { class: "gv-row-actions" },
            actionButton("Remove", "remove", reasonFor("remove", m), { class: "gv-btn gv-btn-danger-secondary gv-btn-small", dataset: { path: m.path } }),
            actionButton("XML / QEMU…", "hostdev", "", { class: "gv-btn gv-btn-link gv-btn-small", dataset: { target: m.uuid } })),
    )));
    $("mdevs-empty").hidden = mdevs.length > 0 || !state.ready;

    const defs = model.definitionRows(state.definitions);
    fill($("definitions").tBodies[0], defs.map(d => el("tr", { dataset: { uuid: d.uuid, owner: d.owner } },
        el("td", { "data-label": "UUID", class: "gv-mono" }, d.uuid),
        el("td", { "data-label": "Parent", class: "gv-mono" }, d.parent),
        el("td", { "data-label": "Type" }, d.type),
        el("td", { "data-label": "Owner" }, d.owner, d.readOnly ? [" ", badge("read-only")] : null),
        el("td", { "data-label": "Start" }, d.start),
        el("td", { "data-label": "State" }, d.active ? "running" : "stopped"),
        el("td", { class: "gv-row-actions" },
            ["start", "stop", "undefine"].map(a => actionButton(a[0].toUpperCase() + a.slice(1), a, reasonFor(a, d),
                { dataset: { uuid: d.uuid, parent: d.parent } }))),
    )));
    $("definitions-empty").hidden = defs.length > 0 || !state.ready;

    // The define form keeps what the user picked while the lists refresh.
    const choices = model.defineChoices(tables);
    const ps = $("define-parent");
    const prevParent = ps.value;
    const pkey = choices.map(c => c.parent).join(",");
    if (ps.dataset.options !== pkey) {
        fill(ps, choices.map(c => el("option", { value: c.parent }, c.label)));
        ps.dataset.options = pkey;
        if (choices.some(c => c.parent === prevParent)) ps.value = prevParent;
    }
    const chosen = choices.find(c => c.parent === ps.value);
    const ts = $("define-type");
    const tkey = ps.value + ":" + (chosen ? chosen.types.map(t => t.id).join(",") : "");
    if (ts.dataset.options !== tkey) {
        const prevType = ts.value;
        fill(ts, (chosen ? chosen.types : []).map(t => el("option", { value: t.id }, t.label)));
        ts.dataset.options = tkey;
        if (chosen && chosen.types.some(t => t.id === prevType)) ts.value = prevType;
    }
    const defineWhy = choices.length ? reasonFor("define") : "No mdev parent on this host.";
    setReason($("define-submit"), defineWhy);
    $("define-why").textContent = defineWhy;
    $("define-why").hidden = !defineWhy;
}

// ---------------------------------------------------------------- policy

export function renderPlan(container, plan) {
    if (!plan) { fill(container, [el("p", { class: "gv-empty" }, "Planning…")]); return }
    if (plan.error) {
        const d = model.describeError(plan.error);
        fill(container, [el("p", { class: "gv-bad" }, "No plan: " + d.message), el("p", { class: "gv-hint" }, d.hint)]);
        return;
    }
    const v = model.planView(plan.text, plan.json);
    if (!v.parsed) { fill(container, [el("pre", { class: "gv-pre" }, v.text || "Nothing to do.")]); return }
    const nodes = [];
    if (v.empty) nodes.push(el("p", { class: "gv-empty gv-plan-empty" }, "Nothing to do: the host matches the policy."));
    if (v.steps.length) nodes.push(el("ol", { class: "gv-steps" }, v.steps.map(s => el("li", { dataset: { kind: s.kind } },
        el("div", { class: "gv-step-title" }, s.title),
        el("div", { class: "gv-step-why" }, "Why: ", s.reason, s.rule ? " (rule \u201c" + s.rule + "\u201d)" : s.gpu ? "" : " ([host])"),
        s.operations.length ? el("ul", { class: "gv-ops" }, s.operations.map(o => el("li", { class: "gv-mono" }, o))) : null))));
    if (v.refusals.length) nodes.push(el("h3", {}, "Refused"), el("ul", { class: "gv-warnings" }, v.refusals.map(r => el("li", {}, r.gpu + ": " + r.message + (r.rule ? " (rule \u201c" + r.rule + "\u201d)" : "")))));
    if (v.notes.length) nodes.push(el("h3", {}, "Notes"), el("ul", {}, v.notes.map(n => el("li", {}, n))));
    fill(container, nodes);
}

export function renderPolicy(state, reasons) {
    const p = model.policyView(state.manager);
    if (p) {
        fill($("policy-facts"), [
            ...fact("Policy file", p.path),
            ...fact("Enforcement", p.mode),
            ...fact("Error", p.error || "none", { ok: !p.error }),
            ...fact("Last apply", p.lastApply),
            ...fact("Drift", p.drift.length ? p.drift.length + " difference(s) from the policy" : "none", { ok: p.drift.length === 0, details: p.drift }),
        ]);
    }
    setReason($("apply"), reasons.apply);
    setReason($("reload"), reasons.reload);
    const why = [];
    if (reasons.apply) why.push(el("li", {}, el("strong", {}, "Apply: "), reasons.apply));
    if (reasons.reload && reasons.reload !== reasons.apply) why.push(el("li", {}, el("strong", {}, "Reload: "), reasons.reload));
    fill($("policy-why"), why);
    renderPlan($("plan"), state.plan);
}

// ---------------------------------------------------------------- dialog

/**
 * A modal confirmation. body: nodes; onConfirm(ui) runs after Confirm, with ui.progress(jobView),
 * ui.done(ok, text), ui.fail(error). Without onConfirm the dialog only informs (Close).
 */
export function openDialog({ title, body, confirmLabel, danger, onConfirm }) {
    const dialog = $("dialog");
    const ok = $("dialog-ok");
    const cancel = $("dialog-cancel");
    $("dialog-title").textContent = title;
    fill($("dialog-body"), body);
    $("dialog-status").hidden = true;
    $("dialog-status-text").textContent = "";
    $("dialog-status-text").className = "";
    $("dialog-progress").hidden = false;
    ok.hidden = !onConfirm;
    ok.disabled = false;
    ok.textContent = confirmLabel || "Confirm";
    ok.className = "gv-btn " + (danger ? "gv-btn-danger" : "gv-btn-primary");
    cancel.textContent = onConfirm ? "Cancel" : "Close";
    cancel.disabled = false;
    dialog.dataset.state = "open";
    dialog.dataset.progressUpdates = "0";

    const close = () => { dialog.dataset.state = "closed"; if (dialog.open) dialog.close() };
    const ui = {
        progress(job) {
            dialog.dataset.progressUpdates = String(Number(dialog.dataset.progressUpdates || 0) + 1);
            $("dialog-status").hidden = false;
            $("dialog-progress").value = job.percent;
            $("dialog-status-text").textContent = (job.operation || "Working") + ": " + job.percent + "%";
        },
        done(success, text, hint) {
            $("dialog-status").hidden = false;
            $("dialog-progress").value = 100;
            $("dialog-progress").hidden = true;
            $("dialog-status-text").className = success ? "gv-good" : "gv-bad";
            $("dialog-status-text").replaceChildren(el("strong", {}, success ? "Done. " : "Failed. "), text || "", hint ? el("span", { class: "gv-hint gv-block" }, hint) : "");
            dialog.dataset.state = success ? "done" : "failed";
            ok.hidden = true;
            cancel.disabled = false;
            cancel.textContent = "Close";
        },
        fail(error) {
            const d = model.describeError(error);
            ui.done(false, d.title + ": " + d.message, d.hint);
        },
    };
    ok.onclick = async () => {
        ok.disabled = true;
        cancel.disabled = true;
        dialog.dataset.state = "running";
        $("dialog-status").hidden = false;
        $("dialog-status-text").textContent = "Working…";
        try {
            await onConfirm(ui);
        } catch (e) {
            ui.fail(e);
        }
    };
    cancel.onclick = close;
    dialog.oncancel = ev => { if (cancel.disabled) ev.preventDefault(); else dialog.dataset.state = "closed" };
    if (!dialog.open) dialog.showModal();
    return ui;
}

export function requestBlock(req) {
    const r = model.requestView(req);
    return [
        el("p", {}, r.summary),
        el("p", { class: "gv-hint" }, "This action has no dry run. The request gpuvirtd will receive:"),
        el("pre", { class: "gv-pre gv-request" }, r.call + "\n  on " + r.path),
        el("p", { class: "gv-hint" }, "The same from a shell: ", el("code", {}, r.cli)),
    ];
}

export function planBlock(intro, text) {
    return [el("p", {}, intro), el("pre", { class: "gv-pre gv-dry-run" }, text || "(empty plan)")];
}
