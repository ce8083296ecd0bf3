// The page in a real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// against cockpit-ws + cockpit-bridge + gpuvirtd on a simulated runbook host. Started by
// tests/cockpit/run.sh inside its private namespace; the environment names the bus, the policy
// files and where screenshots go. Tests run in order: each builds on the host the last left.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import fs from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";

const run = promisify(execFile);
const env = name => {
    const v = process.env[name];
    if (!v) throw new Error(name + " is not set: run tests/cockpit/run.sh");
    return v;
};
const BUS = env("GPUVIRT_BUS");
const CTL = path.join(env("GPUVIRT_BIN_DIR"), "gpuvirtctl");
const SHOTS = env("GPUVIRT_SHOTS");
const POLICY = env("GPUVIRT_POLICY");
const POLICY_EXAMPLE = env("GPUVIRT_POLICY_EXAMPLE");
const BRIDGE = process.env.GPUVIRT_BRIDGE_VERSION || "?";
const PAGE = port => `http://127.0.0.1:${port}/cockpit/@localhost/gpuvirt/index.html`;
const CARD = "0000:41:00.0";
const TIMEOUT = 20000;

let browser;
const consoleErrors = [];

async function ctl(...args) {
    const { stdout } = await run(CTL, ["--bus-address", BUS, ...args], { timeout: 20000 });
    return stdout;
}
const ctlJson = async (...args) => JSON.parse(await ctl(...args, "--json"));

async function openPage(port, viewport) {
    const context = await browser.newContext({ viewport: viewport || { width: 1280, height: 800 } });
    const page = await context.newPage();
    const where = `:${port}`;
    page.on("console", m => {
        if (m.type() === "error") consoleErrors.push(`${where} console: ${m.text()}`);
    });
    page.on("pageerror", e => consoleErrors.push(`${where} page error: ${e.message}`));
    await page.goto(PAGE(port));
    await page.waitForSelector('#app[data-ready="true"]', { timeout: TIMEOUT });
    return page;
}

async function show(page, view, extra) {
    await page.evaluate(([v, x]) => cockpit.location.go(x ? [v, x] : [v]), [view, extra || ""]);
    await page.waitForSelector(`#view-${view}:not([hidden])`);
}

// Views whole (fullPage); dialogs and the narrow window as the user sees them (the viewport).
async function shot(page, name) {
    const viewport = name.startsWith("dialog-") || name.startsWith("narrow-");
    await page.screenshot({ path: path.join(SHOTS, name + ".png"), fullPage: !viewport });
}

async function confirmDialog(page) {
    await page.waitForSelector('#dialog[data-state="open"]');
    await page.click("#dialog-ok");
    await page.waitForSelector('#dialog[data-state="done"], #dialog[data-state="failed"]', { timeout: TIMEOUT });
    const state = await page.getAttribute("#dialog", "data-state");
    const text = await page.textContent("#dialog-status-text");
    assert.equal(state, "done", "the dialog reports: " + text);
    return text;
}

async function closeDialog(page) {
    await page.click("#dialog-cancel");
    await page.waitForFunction(() => !document.getElementById("dialog").open);
}

const cellTexts = (page, selector) => page.$$eval(selector, rows => rows.map(r => [...r.cells].map(c => c.textContent.trim())));

before(async () => {
    await fs.mkdir(SHOTS, { recursive: true });
    browser = await chromium.launch({
        executablePath: process.env.GPUVIRT_CHROMIUM || "/usr/bin/chromium",
        args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"],
    });
    console.log(`# chromium ${browser.version()}, cockpit-ws 287, bridge ${BRIDGE}`);
});

after(async () => {
    if (browser) await browser.close();
});

let root; // the privileged session's page, reused by the tests below

test("the GPUs table shows what `gpuvirtctl list --json` says", async () => {
    root = await openPage(9090);
    await root.waitForSelector("#gpus tbody tr");
    const want = await ctlJson("list");
    const rows = await cellTexts(root, "#gpus tbody tr");
    assert.equal(rows.length, want.length);
    for (const g of want) {
        const r = rows.find(row => row[0].startsWith(g.pci_address));
        assert.ok(r, "row for " + g.pci_address);
        assert.equal(r[1], `${g.vendor_name} ${g.product_name}`);
        assert.equal(r[2], g.driver);
        assert.equal(r[3], g.state);
        assert.equal(r[6], String(g.numa_node));
        assert.equal(r[7], g.reset_methods.length ? g.reset_methods.join(", ") : "—");
    }
    const health = await root.textContent("#health");
    assert.match(health, /IOMMU\s*enabled/);
    assert.match(health, /5\.4\.0-84-generic/);
    await shot(root, "overview");
});

const SHELL = process.env.GPUVIRT_SHELL || "none";
const SHELL_SKIP = { 1: false, none: "cockpit-system (the shell) is not available", "other-bridge": "the 287 shell is checked with the 287 bridge only" }[SHELL];
test("Cockpit's shell lists GPUs under System and shows the page in its frame", { skip: SHELL_SKIP }, async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.on("pageerror", e => consoleErrors.push(`shell page error: ${e.message}`));
    await page.goto("http://127.0.0.1:9090/");
    // The System section of the navigation holds the entry, after Logs (order 55).
    const entry = page.locator('#host-apps a[href="/gpuvirt"], nav a[href="/gpuvirt"]').first();
    await entry.waitFor({ timeout: TIMEOUT });
    assert.equal((await entry.textContent()).trim(), "GPUs");
    const section = await entry.evaluate(a => {
        let n = a.closest("section, li")?.parentElement;
        while (n && !n.querySelector("h2, .pf-c-nav__section-title")) n = n.parentElement;
        return n ? n.querySelector("h2, .pf-c-nav__section-title").textContent.trim() : "";
    });
    assert.equal(section, "System");
    await entry.click();
    const frame = page.frameLocator('iframe[name="cockpit1:localhost/gpuvirt"]');
    await frame.locator('#app[data-ready="true"]').waitFor({ timeout: TIMEOUT });
    assert.ok(await frame.locator("#gpus tbody tr").count() >= 1);
    await page.screenshot({ path: path.join(SHOTS, "shell.png") });
    await context.close();
});

test("the GPU view's IOMMU group is `gpuvirtctl groups --json`'s", async () => {
    await show(root, "gpu", CARD);
    await root.waitForSelector("#group-members tbody tr");
    const groups = await ctlJson("groups");
    const gpu = (await ctlJson("show", CARD));
    const group = groups.find(g => g.id === gpu.iommu_group);
    assert.equal(await root.textContent("#group-title"), "IOMMU group " + group.id);
    const rows = await cellTexts(root, "#group-members tbody tr");
    assert.deepEqual(rows.map(r => [r[0], r[2]]), group.members.map(m => [m.name, m.driver || "(none)"]));
    assert.ok(rows.every((r, i) => r[1].includes(group.members[i].class)));
    assert.match(await root.textContent("#group-verdict"), group.viable ? /^Viable/ : /^Not viable/);
    assert.equal(await root.isDisabled("#assign"), false, "an unmanaged card on the host can be given to VMs");
    assert.equal(await root.isDisabled("#return"), true);
    await shot(root, "gpu");
});

test("vGPU types per parent are `gpuvirtctl types --json`'s, with available instances", async () => {
    await show(root, "vgpus");
    await root.waitForSelector(".gv-parent tbody tr");
    const want = await ctlJson("types");
    for (const parent of want) {
        const rows = await cellTexts(root, `.gv-parent[data-parent="${parent.name}"] tbody tr`);
        assert.deepEqual(rows.map(r => [r[0], r[1], Number(r[2])]),
            parent.types.map(t => [t.id, t.name, t.available_instances]).sort((a, b) => a[0].localeCompare(b[0], undefined, { numeric: true })));
    }
    assert.deepEqual(await ctlJson("mdevs"), []);
    assert.equal(await root.isVisible("#mdevs-empty"), true);
});

test("create a vGPU from the page, see it listed, remove it", async () => {
    const create = `.gv-parent[data-parent="${CARD}"] tr[data-type="nvidia-300"] button[data-action="create"]`;
    await root.click(create);
    const request = await root.textContent("#dialog .gv-request");
    assert.match(request, /^ShardParent\.CreateMdev\("nvidia-300", "", \{\}\)/);
    await confirmDialog(root);
    await closeDialog(root);
    await root.waitForSelector("#mdevs tbody tr", { timeout: TIMEOUT });
    const mdevs = await ctlJson("mdevs");
    assert.equal(mdevs.length, 1);
    const rows = await cellTexts(root, "#mdevs tbody tr");
    assert.equal(rows.length, 1);
    assert.equal(rows[0][0], mdevs[0].uuid);
    assert.equal(rows[0][1], CARD);
    // The type's capacity follows (2 → 1) without a reload: the watch, no polling.
    await root.waitForFunction(sel => document.querySelector(sel)?.textContent === "1",
        `.gv-parent[data-parent="${CARD}"] tr[data-type="nvidia-300"] .gv-available`);
    await shot(root, "vgpus");

    // A vGPU's libvirt XML is RenderHostdev's for its UUID, as `gpuvirtctl xml UUID` prints it.
    await root.click(`#mdevs tr[data-uuid="${mdevs[0].uuid}"] button[data-action="hostdev"]`);
    await root.waitForSelector("#hostdev-xml");
    assert.equal((await root.textContent("#hostdev-xml")).trim(), (await ctl("xml", mdevs[0].uuid)).trim());
    await closeDialog(root);

    await root.click(`#mdevs tr[data-uuid="${mdevs[0].uuid}"] button[data-action="remove"]`);
    assert.match(await root.textContent("#dialog .gv-request"), /^Mdev\.Remove\(\{\}\)/);
    await confirmDialog(root);
    await closeDialog(root);
    await root.waitForSelector("#mdevs tbody tr", { state: "detached", timeout: TIMEOUT });
    assert.deepEqual(await ctlJson("mdevs"), []);
});

test("define, start, stop and undefine a persistent vGPU", async () => {
    await root.selectOption("#define-parent", CARD);
    await root.selectOption("#define-type", "nvidia-299");
    await root.uncheck("#define-auto");
    await root.click("#define-submit");
    assert.match(await root.textContent("#dialog .gv-request"), /^Manager\.DefineMdev\("0000:41:00.0", "nvidia-299", "", \{"auto": <b false>\}\)/);
    await confirmDialog(root);
    await closeDialog(root);
    const row = "#definitions tbody tr";
    await root.waitForSelector(row, { timeout: TIMEOUT });
    let defs = await cellTexts(root, row);
    assert.equal(defs.length, 1);
    const uuid = defs[0][0];
    assert.deepEqual(defs[0].slice(1, 6), [CARD, "nvidia-299", "gpuvirt", "manual", "stopped"]);
    const listed = await ctl("mdev", "list", "--defined", "--table");
    assert.ok(listed.includes(uuid), "gpuvirtctl mdev list --defined shows " + uuid + ":\n" + listed);

    await root.click(`${row}[data-uuid="${uuid}"] button[data-action="start"]`);
    await confirmDialog(root);
    await closeDialog(root);
    await root.waitForFunction(u => document.querySelector(`#mdevs tr[data-uuid="${u}"]`), uuid, { timeout: TIMEOUT });
    await root.waitForFunction(u => document.querySelector(`#definitions tr[data-uuid="${u}"]`)?.cells[5].textContent === "running", uuid);
    assert.deepEqual((await ctlJson("mdevs")).map(m => m.uuid), [uuid]);
    await shot(root, "vgpus-definitions");

    await root.click(`${row}[data-uuid="${uuid}"] button[data-action="stop"]`);
    await confirmDialog(root);
    await closeDialog(root);
    await root.waitForSelector(`#mdevs tr[data-uuid="${uuid}"]`, { state: "detached", timeout: TIMEOUT });

    await root.click(`${row}[data-uuid="${uuid}"] button[data-action="undefine"]`);
    await confirmDialog(root);
    await closeDialog(root);
    await root.waitForSelector(`${row}[data-uuid="${uuid}"]`, { state: "detached", timeout: TIMEOUT });
    defs = await cellTexts(root, row);
    assert.equal(defs.length, 0);
});

test("pass the card through and back: the job is followed to its end, the driver column follows", async () => {
    await show(root, "gpu", CARD);
    await root.click("#assign");
    await root.waitForSelector('#dialog[data-state="open"] .gv-dry-run');
    assert.match(await root.textContent("#dialog .gv-dry-run"), /vfio-pci/);
    await shot(root, "dialog-passthrough-plan");
    const done = await confirmDialog(root);
    assert.match(done, /^Done\./);
    assert.equal(await root.$eval("#dialog-progress", p => p.value), 100);
    assert.ok(Number(await root.getAttribute("#dialog", "data-progress-updates")) >= 1, "the Job's properties were followed");
    await shot(root, "dialog-passthrough-done");
    await closeDialog(root);
    await root.waitForFunction(() => /vfio-pci/.test(document.getElementById("gpu-facts").textContent), null, { timeout: TIMEOUT });
    assert.equal((await ctlJson("show", CARD)).driver, "vfio-pci");
    await show(root, "overview");
    await root.waitForFunction(a => document.querySelector(`#gpus tr[data-address="${a}"] .gv-driver`)?.textContent === "vfio-pci", CARD);

    // The libvirt XML / QEMU arguments are RenderHostdev's, the same gpuvirtctl prints.
    await show(root, "gpu", CARD);
    await root.click("#hostdev");
    await root.waitForSelector("#hostdev-xml");
    assert.equal((await root.textContent("#hostdev-xml")).trim(), (await ctl("xml", CARD)).trim());
    assert.equal((await root.textContent("#hostdev-qemu")).trim(), (await ctl("qemu-args", CARD)).trim());
    await root.click('#dialog button[data-copy="xml"]');
    await root.waitForFunction(() => /Copied|Selected/.test(document.querySelector('#dialog button[data-copy="xml"]').textContent));
    await shot(root, "dialog-hostdev");
    await closeDialog(root);

    assert.equal(await root.isDisabled("#return"), false);
    await root.click("#return");
    await root.waitForSelector('#dialog[data-state="open"] .gv-dry-run');
    await confirmDialog(root);
    await closeDialog(root);
    await root.waitForFunction(() => /nvidia/.test(document.getElementById("gpu-facts").textContent), null, { timeout: TIMEOUT });
    assert.equal((await ctlJson("show", CARD)).driver, "nvidia");
    await show(root, "overview");
    await root.waitForFunction(a => document.querySelector(`#gpus tr[data-address="${a}"] .gv-driver`)?.textContent === "nvidia", CARD);
});

test("an unprivileged session sees every action disabled and is refused if it calls anyway", async () => {
    const page = await openPage(9091);
    // The session really is unprivileged: gpuvirtd says no to each question.
    const answers = await page.evaluate(async () => {
        const c = cockpit.dbus("org.gpuvirt.GpuVirt1", { superuser: "try" });
        const out = {};
        for (const m of ["CanPassthrough", "CanShard", "CanManagePolicy"])
            out[m] = (await c.call("/org/gpuvirt/GpuVirt1/Manager", "org.gpuvirt.GpuVirt1.Manager", m, []))[0];
        return out;
    });
    assert.deepEqual(answers, { CanPassthrough: "no", CanShard: "no", CanManagePolicy: "no" });
    assert.equal(await page.isVisible("#permission"), true);
    let checked = 0;
    for (const view of ["overview", "gpu", "vgpus", "policy"]) {
        await show(page, view, view === "gpu" ? CARD : "");
        if (view === "vgpus") await page.waitForSelector(".gv-parent tbody tr");
        const enabled = await page.$$eval(
            `#view-${view} button[data-action]:not([data-action="hostdev"]), #view-${view} #assign, #view-${view} #return, #view-${view} #apply, #view-${view} #reload, #view-${view} #define-submit`,
            bs => bs.filter(b => !b.disabled || !b.title).map(b => b.id || b.dataset.action + " " + (b.dataset.type || b.dataset.uuid || "")));
        assert.deepEqual(enabled, [], `enabled (or without a reason) on ${view}`);
        checked += await page.$$eval(`#view-${view} button[data-action], #view-${view} #assign, #view-${view} #return, #view-${view} #apply, #view-${view} #reload, #view-${view} #define-submit`, bs => bs.length);
        await shot(page, "unprivileged-" + view);
    }
    assert.ok(checked >= 20, "checked " + checked + " buttons");
    assert.match(await page.getAttribute("#assign", "title"), /administrative access/);

    const refused = await page.evaluate(async card => {
        const c = cockpit.dbus("org.gpuvirt.GpuVirt1", { superuser: "try" });
        const results = {};
        const attempt = async (name, p, iface, method, args, type) => {
            try {
                await c.call(p, iface, method, args, { type, flags: "" });
                results[name] = "allowed";
            } catch (e) {
                results[name] = e.name;
            }
        };
        const gpu = "/org/gpuvirt/GpuVirt1/gpus/" + card.replace(/[:.]/g, "_");
        await attempt("CreateMdev", gpu, "org.gpuvirt.GpuVirt1.ShardParent", "CreateMdev", ["nvidia-300", "", {}], "ssa{sv}");
        await attempt("AssignPassthrough", gpu, "org.gpuvirt.GpuVirt1.Gpu", "AssignPassthrough", [{}], "a{sv}");
        await attempt("Reconcile", "/org/gpuvirt/GpuVirt1/Manager", "org.gpuvirt.GpuVirt1.Manager", "Reconcile", [{}], "a{sv}");
        return results;
    }, CARD);
    assert.deepEqual(refused, {
        CreateMdev: "org.freedesktop.DBus.Error.AccessDenied",
        AssignPassthrough: "org.freedesktop.DBus.Error.AccessDenied",
        Reconcile: "org.freedesktop.DBus.Error.AccessDenied",
    });
    assert.deepEqual(await ctlJson("mdevs"), []);
    assert.equal((await ctlJson("show", CARD)).driver, "nvidia");
    await page.context().close();
});

test("reload the example policy, apply it from the page, see the reboot banner and the card managed", async () => {
    await fs.copyFile(POLICY_EXAMPLE, POLICY);
    await show(root, "policy");
    await root.click("#reload");
    await confirmDialog(root);
    await closeDialog(root);
    await root.waitForSelector("#plan .gv-steps > li", { timeout: TIMEOUT });
    const steps = await root.$$eval("#plan .gv-steps > li .gv-step-title", ls => ls.map(l => l.textContent));
    assert.equal(steps.length, 4, steps.join("\n"));
    assert.match(steps[0], /^create mdev .* of type nvidia-300/);
    assert.match(steps[2], /modprobe\.d/);
    await shot(root, "policy");

    await root.click("#apply");
    await root.waitForSelector('#dialog[data-state="open"] .gv-dialog-plan .gv-steps > li');
    await shot(root, "dialog-apply-plan");
    const report = await confirmDialog(root);
    assert.match(report, /done: create mdev/);
    await closeDialog(root);
    await root.waitForSelector("#reboot:not([hidden])", { timeout: TIMEOUT });
    const reasons = await root.$$eval("#reboot-reasons li", ls => ls.map(l => l.textContent));
    assert.equal(reasons.length, 2, reasons.join("\n"));
    assert.ok(reasons.every(r => r.startsWith("changed during this boot")), reasons.join("\n"));
    await root.waitForSelector("#plan .gv-plan-empty", { timeout: TIMEOUT });
    assert.equal((await ctlJson("mdevs")).length, 2);
    await shot(root, "policy-applied");

    // The card is the policy's now: its manual actions say why instead of failing on click.
    await show(root, "gpu", CARD);
    assert.equal(await root.isDisabled("#assign"), true);
    assert.match(await root.getAttribute("#assign", "title"), /policy rule \u201cvdi\u201d/);
    assert.match(await root.textContent("#gpu-why"), /vdi/);
    await show(root, "vgpus");
    await root.waitForFunction(() => document.querySelectorAll("#mdevs tbody tr").length === 2);
    const create = await root.$(`.gv-parent[data-parent="${CARD}"] tr[data-type="nvidia-212"] button[data-action="create"]`);
    assert.equal(await create.isDisabled(), true);
    await shot(root, "vgpus-managed");
    await show(root, "overview");
    const row = await cellTexts(root, `#gpus tr[data-address="${CARD}"]`);
    assert.equal(row[0][5], "vdi");
    await shot(root, "overview-reboot");
});

test("a narrow window (400 px) stacks the tables", async () => {
    const page = await openPage(9090, { width: 400, height: 800 });
    await page.waitForSelector("#gpus tbody tr");
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 400, "the page is " + width + " px wide at 400");
    await shot(page, "narrow-overview");
    await show(page, "vgpus");
    await page.waitForSelector(".gv-parent tbody tr");
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth) <= 400);
    await shot(page, "narrow-vgpus");
    await page.context().close();
});

test("no console errors on any view", () => {
    assert.deepEqual(consoleErrors, []);
});
