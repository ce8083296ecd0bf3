// The GPU view on a host where a GPU shares its IOMMU group with a NIC the host uses
// (the nic-shared-group fixture): the group's members, the verdict and gpuvirtd's reasons in
// words, and passthrough disabled with those reasons before anyone clicks. Started by
// tests/cockpit/run.sh after the main browser test.

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
    await page.goto("http://127.0.0.1:9090/cockpit/@localhost/gpuvirt/index.html#/gpu/0000:03:00.0");
    await page.waitForSelector('#app[data-ready="true"]', { timeout: 20000 });
});

after(async () => { if (browser) await browser.close() });

test("a GPU in a shared group: members, 'not viable' and the reasons, passthrough disabled with them", async () => {
    const groups = await ctlJson("groups");
    const gpu = await ctlJson("show", "0000:03:00.0");
    const group = groups.find(g => g.id === gpu.iommu_group);
    assert.equal(group.viable, false, "the fixture's group 12 is not viable");
    await page.waitForSelector("#group-members tbody tr");
    assert.equal(await page.textContent("#group-title"), "IOMMU group " + group.id);
    assert.match(await page.textContent("#group-verdict"), /^Not viable/);
    const problems = await page.$$eval("#group-problems li", ls => ls.map(l => l.textContent));
    assert.deepEqual(problems, group.viability_problems);
    const members = await page.$$eval("#group-members tbody tr", rs => rs.map(r => [r.cells[0].textContent, r.cells[2].textContent]));
    assert.deepEqual(members, group.members.map(m => [m.name, m.driver || "(none)"]));
    assert.equal(await page.isDisabled("#assign"), true);
    const why = await page.getAttribute("#assign", "title");
    for (const p of group.viability_problems) assert.ok(why.includes(p), why);
    await page.screenshot({ path: path.join(SHOTS, "gpu-not-viable.png"), fullPage: true });
});

test("the GPU alone in its group is viable and can be given to VMs", async () => {
    await page.selectOption("#gpu-select", "0000:21:00.0");
    await page.waitForFunction(() => document.getElementById("group-title").textContent === "IOMMU group 20");
    assert.match(await page.textContent("#group-verdict"), /^Viable/);
    assert.equal(await page.isDisabled("#assign"), false);
    assert.deepEqual(errors, []);
});
