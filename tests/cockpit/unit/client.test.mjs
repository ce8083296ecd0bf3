// client.js against a fake `cockpit` (no bridge, no browser): what it asks gpuvirtd and when,
// the flags of mutating calls, Job following and the Superuser re-ask.
//   node --test tests/cockpit/unit

import { test } from "node:test";
import assert from "node:assert/strict";
import { GpuvirtClient } from "../../../cockpit/gpuvirt/client.js";
import { IFACE, MANAGER_PATH } from "../../../cockpit/gpuvirt/model.js";

const tick = () => new Promise(r => setTimeout(r, 0));
const settle = async () => { for (let i = 0; i < 5; i++) await tick() };

function eventTarget(obj) {
    const listeners = {};
    Object.defineProperty(obj, "addEventListener", { enumerable: false, value: (t, fn) => (listeners[t] ||= []).push(fn) });
    Object.defineProperty(obj, "dispatch", { enumerable: false, value: (t, ...a) => (listeners[t] || []).forEach(fn => fn({ type: t }, ...a)) });
    return obj;
}

function fakeCockpit({ answers, replies } = {}) {
    const calls = [];
    const subscriptions = [];
    const dicts = {};
    const superuser = eventTarget({ Current: "none", valid: true, wait: () => Promise.resolve() });
    const dict = iface => (dicts[iface] ||= eventTarget({}));
    const can = Object.assign({ CanPassthrough: "no", CanShard: "no", CanManagePolicy: "no" }, answers || {});
    const cockpit = {
        variant: (t, v) => ({ t, v }),
        dbus(name, options) {
            if (options && options.bus === "internal") return { proxy: () => superuser };
            assert.equal(name, "org.gpuvirt.GpuVirt1");
            assert.equal(options.superuser, "try");
            return eventTarget({
                proxies: (iface, path, opts) => {
                    assert.equal(path, "/org/gpuvirt/GpuVirt1");
                    assert.equal(opts.watch, false, "one watch for all, not one per interface");
                    return dict(iface);
                },
                watch: match => {
                    calls.push({ method: "watch", match });
                    return Promise.resolve();
                },
                subscribe: (match, cb) => subscriptions.push({ match, cb }),
                call: (path, iface, method, args, opts) => {
                    calls.push({ path, iface, method, args, opts: opts || {} });
                    if (method in can) return Promise.resolve([can[method]]);
                    if (method === "ListMdevDefinitions") return Promise.resolve([[]]);
                    if (method === "PlanPolicy") return Promise.resolve(["", "{\"actions\":[],\"refusals\":[],\"notes\":[]}"]);
                    const reply = (replies || {})[method];
                    if (reply instanceof Error) return Promise.reject(reply);
                    return Promise.resolve(reply || []);
                },
            });
        },
    };
    // Adds or changes an object as the bridge's watch would, firing the dictionary's events.
    const put = (iface, path, data) => {
        const d = dict(iface);
        const had = !!d[path];
        d[path] = d[path] || { valid: true, data: {} };
        Object.assign(d[path].data, data);
        if (!had) d.dispatch("added", d[path]);
        d.dispatch("changed", d[path]);
    };
    const remove = (iface, path) => {
        const d = dict(iface);
        const p = d[path];
        delete d[path];
        d.dispatch("removed", p);
    };
    return { cockpit, calls, subscriptions, superuser, put, remove };
}

test("one watch on gpuvirt's root; proxies become plain dictionaries; Can* asked without a prompt", async () => {
    const f = fakeCockpit({ answers: { CanShard: "yes" } });
    f.put(IFACE.manager, MANAGER_PATH, { RebootRequired: false, PolicyPath: "/etc/gpuvirt/policy.toml" });
    f.put(IFACE.gpu, "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0", { PciAddress: "0000:41:00.0", Driver: "nvidia" });
    const client = new GpuvirtClient(f.cockpit);
    await settle();
    assert.deepEqual(f.calls.filter(c => c.method === "watch").map(c => c.match), [{ path_namespace: "/org/gpuvirt/GpuVirt1" }]);
    assert.equal(client.state.ready, true);
    assert.equal(client.state.manager.PolicyPath, "/etc/gpuvirt/policy.toml");
    assert.deepEqual(Object.keys(client.state.gpus), ["/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"]);
    assert.deepEqual(client.state.can, { passthrough: "no", shard: "yes", policy: "no" });
    for (const c of f.calls.filter(c => /^Can/.test(c.method))) assert.equal(c.opts.flags, "", c.method);
    assert.ok(f.calls.some(c => c.method === "ListMdevDefinitions"));
    assert.ok(f.calls.some(c => c.method === "PlanPolicy"));
    assert.equal(client.state.superuser, "none");

    // Live: a changed property reaches the state, a removed object leaves it.
    let renders = 0;
    client.onChange(() => renders++);
    f.put(IFACE.gpu, "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0", { Driver: "vfio-pci" });
    assert.equal(client.state.gpus["/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0"].Driver, "vfio-pci");
    f.remove(IFACE.gpu, "/org/gpuvirt/GpuVirt1/gpus/0000_41_00_0");
    assert.deepEqual(client.state.gpus, {});
    assert.ok(renders >= 2);
});

test("Can* are asked again when Cockpit's administrative access changes", async () => {
    const f = fakeCockpit();
    f.put(IFACE.manager, MANAGER_PATH, {});
    const client = new GpuvirtClient(f.cockpit);
    await settle();
    const asked = () => f.calls.filter(c => c.method === "CanPassthrough").length;
    assert.equal(asked(), 1);
    f.superuser.Current = "root";
    f.superuser.dispatch("changed");
    await settle();
    assert.equal(client.state.superuser, "root");
    assert.equal(asked(), 2);
    f.superuser.dispatch("changed"); // the same value: nothing to re-ask
    await settle();
    assert.equal(asked(), 2);
});

test("mutating calls never allow interactive authorization (flags \"\")", async () => {
    const f = fakeCockpit({ replies: { Reconcile: [true, "done"], AssignPassthrough: ["/", "bind slot ..."] } });
    f.put(IFACE.manager, MANAGER_PATH, {});
    const client = new GpuvirtClient(f.cockpit);
    await settle();
    await client.request({ path: "/p", iface: IFACE.parent, method: "CreateMdev", signature: "ssa{sv}", args: ["nvidia-300", "", {}] });
    await client.reconcile();
    await client.reloadPolicy();
    assert.equal(await client.dryRun("/g", "AssignPassthrough"), "bind slot ...");
    const mutators = f.calls.filter(c => ["CreateMdev", "Reconcile", "ReloadPolicy", "AssignPassthrough"].includes(c.method));
    assert.equal(mutators.length, 4);
    for (const c of mutators) assert.equal(c.opts.flags, "", c.method);
    const dry = mutators.find(c => c.method === "AssignPassthrough");
    assert.deepEqual(dry.args, [{ "dry-run": { t: "b", v: true } }]);
    assert.equal(dry.opts.type, "a{sv}");
});

test("a definition change re-reads ListMdevDefinitions (it changes no property)", async () => {
    const f = fakeCockpit({ replies: { DefineMdev: ["u1"] } });
    f.put(IFACE.manager, MANAGER_PATH, {});
    const client = new GpuvirtClient(f.cockpit);
    await settle();
    const lists = () => f.calls.filter(c => c.method === "ListMdevDefinitions").length;
    const before = lists();
    await client.request({ path: MANAGER_PATH, iface: IFACE.manager, method: "DefineMdev", signature: "sssa{sv}", args: ["p", "t", "", {}] });
    assert.equal(lists(), before + 1);
});

test("a job is followed from a partial first notify to Finished", async () => {
    const job = "/org/gpuvirt/GpuVirt1/jobs/1";
    const f = fakeCockpit({ replies: { AssignPassthrough: [job, "plan"] } });
    f.put(IFACE.manager, MANAGER_PATH, {});
    const client = new GpuvirtClient(f.cockpit);
    await settle();
    // The job's first notify (partial) arrives before the method's reply.
    f.put(IFACE.job, job, { Operation: "assign 0000:41:00 to vfio-pci" });
    const seen = [];
    const done = client.startJob("/g", "AssignPassthrough", p => seen.push(Object.assign({}, p)));
    await settle();
    f.put(IFACE.job, job, { Progress: 0.5 });
    f.put(IFACE.job, job, { Progress: 1, Success: true, Message: "done: bind slot", Finished: true });
    const final = await done;
    assert.equal(final.Finished, true);
    assert.equal(final.Success, true);
    assert.equal(final.Operation, "assign 0000:41:00 to vfio-pci", "kept from the first notify");
    assert.equal(final.Message, "done: bind slot");
    assert.deepEqual(seen.map(p => p.Progress), [undefined, 0.5, 1]);
    assert.equal(f.calls.find(c => c.method === "AssignPassthrough").opts.flags, "");
});

test("a job whose object is already gone ends with its Completed signal; job / means nothing to do", async () => {
    const job = "/org/gpuvirt/GpuVirt1/jobs/2";
    const f = fakeCockpit({ replies: { ReturnToHost: [job, "plan"] } });
    f.put(IFACE.manager, MANAGER_PATH, {});
    const client = new GpuvirtClient(f.cockpit);
    await settle();
    const done = client.startJob("/g", "ReturnToHost");
    await settle();
    const sub = f.subscriptions.find(s => s.match.path === job);
    assert.deepEqual(sub.match, { path: job, interface: IFACE.job, member: "Completed" });
    sub.cb(job, IFACE.job, "Completed", [false, "org.gpuvirt.GpuVirt1.Error.Busy: held by qemu"]);
    const final = await done;
    assert.equal(final.Success, false);
    assert.match(final.Message, /held by qemu/);

    const f2 = fakeCockpit({ replies: { AssignPassthrough: ["/", "0000:41:00 is already assigned"] } });
    const c2 = new GpuvirtClient(f2.cockpit);
    await settle();
    const nothing = await c2.startJob("/g", "AssignPassthrough");
    assert.equal(nothing.Success, true);
    assert.match(nothing.Message, /already assigned/);
});
