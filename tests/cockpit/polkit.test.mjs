// An unprivileged Cockpit session (the bridge runs as nobody) whom polkit allows
// org.gpuvirt.GpuVirt1.shard and nothing else, as a site rule would (security.md's kvm-admins
// example; played by python-dbusmock's polkitd). The page must offer the vGPU actions, and they
// must work, while passthrough and the policy stay disabled with the reason. Started by
// tests/cockpit/run.sh.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import fs from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";

const run = promisify(execFile);
const BUS = process.env.GPUVIRT_BUS;
const CTL = path.join(process.env.GPUVIRT_BIN_DIR || "", "gpuvirtctl");
const SHOTS = process.env.GPUVIRT_SHOTS;
const CARD = "0000:41:00.0";
const ctlJson = async (...args) => JSON.parse((await run(CTL, ["--bus-address", BUS, ...args, "--json"])).stdout);

let browser, page;
const errors = [];

before(async () => {
    await fs.mkdir(SHOTS, { recursive: true });
    browser = await chromium.launch({ executablePath: process.env.GPUVIRT_CHROMIUM || "/usr/bin/chromium",
        args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on("console", m => { if (m.type() === "error") errors.push(m.text()) });
    page.on("pageerror", e => errors.push(e.message));
    await page.goto("http://127.0.0.1:9091/cockpit/@localhost/gpuvirt/index.html#/vgpus");
    await page.waitForSelector('#app[data-ready="true"]', { timeout: 20000 });
});

after(async () => { if (browser) await browser.close() });

test("gpuvirtd answers the Can* questions from polkit: shard yes, the rest no", async () => {
    const answers = await page.evaluate(async () => {
        const c = cockpit.dbus("org.gpuvirt.GpuVirt1", { superuser: "try" });
        const out = {};
        for (const m of ["CanPassthrough", "CanShard", "CanManagePolicy"])
            out[m] = (await c.call("/org/gpuvirt/GpuVirt1/Manager", "org.gpuvirt.GpuVirt1.Manager", m, []))[0];
        return out;
    });
    assert.deepEqual(answers, { CanPassthrough: "no", CanShard: "yes", CanManagePolicy: "no" });
    assert.equal(await page.textContent("#permission strong"), "Not allowed for you: passthrough, the device policy.");
});

test("the vGPU actions are offered and work; passthrough and the policy are disabled", async () => {
    const create = `.gv-parent[data-parent="${CARD}"] tr[data-type="nvidia-300"] button[data-action="create"]`;
    await page.waitForSelector(create);
    assert.equal(await page.isDisabled(create), false);
    assert.equal(await page.isDisabled("#define-submit"), false);
    await page.click(create);
    await page.click("#dialog-ok");
    await page.waitForSelector('#dialog[data-state="done"], #dialog[data-state="failed"]', { timeout: 20000 });
    assert.equal(await page.getAttribute("#dialog", "data-state"), "done", await page.textContent("#dialog-status-text"));
    await page.click("#dialog-cancel");
    await page.waitForSelector("#mdevs tbody tr", { timeout: 20000 });
    const mdevs = await ctlJson("mdevs");
    assert.equal(mdevs.length, 1);
    await page.screenshot({ path: path.join(SHOTS, "polkit-vgpus.png"), fullPage: true });
    await page.click(`#mdevs tr[data-uuid="${mdevs[0].uuid}"] button[data-action="remove"]`);
    await page.click("#dialog-ok");
    await page.waitForSelector('#dialog[data-state="done"]', { timeout: 20000 });
    await page.click("#dialog-cancel");
    await page.waitForSelector("#mdevs tbody tr", { state: "detached", timeout: 20000 });
    assert.deepEqual(await ctlJson("mdevs"), []);

    await page.evaluate(c => cockpit.location.go(["gpu", c]), CARD);
    await page.waitForSelector("#view-gpu:not([hidden])");
    assert.equal(await page.isDisabled("#assign"), true);
    assert.match(await page.getAttribute("#assign", "title"), /^You may not do this/);
    await page.evaluate(() => cockpit.location.go(["policy"]));
    await page.waitForSelector("#view-policy:not([hidden])");
    assert.equal(await page.isDisabled("#apply"), true);
    assert.equal(await page.isDisabled("#reload"), true);
    assert.deepEqual(errors, []);
});
