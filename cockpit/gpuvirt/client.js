// The page's one connection to gpuvirtd: one cockpit.dbus client, one ObjectManager watch and a
// live proxy dictionary per interface (the pattern of Cockpit's storage page). It turns the
// proxies into plain property dictionaries (model.js's input) and makes the calls. Mutating
// calls go with flags "" so gpuvirtd never waits on a password prompt nobody can answer.

import { BUS_NAME, ROOT_PATH, MANAGER_PATH, IFACE, PERMISSION_METHOD } from "./model.js";

const KINDS = { manager: IFACE.manager, gpus: IFACE.gpu, groups: IFACE.group, parents: IFACE.parent, mdevs: IFACE.mdev, jobs: IFACE.job };
const NO_PROMPT = { flags: "" };

export class GpuvirtClient {
    constructor(cockpit) {
        this.cockpit = cockpit;
        this.listeners = new Set();
        this.jobWaiters = new Map();
        this.state = {
            ready: false,
            closed: null, // a problem string when the channel closed
            manager: null,
            gpus: {}, groups: {}, parents: {}, mdevs: {}, jobs: {},
            definitions: [],
            definitionsError: null,
            can: {},
            superuser: null,
            plan: null,
        };
        this.dbus = cockpit.dbus(BUS_NAME, { superuser: "try" });
        this.dbus.addEventListener("close", (_ev, options) => {
            this.state.closed = (options && options.problem) || "disconnected";
            this.emit();
        });
        this.proxies = {};
        for (const [kind, iface] of Object.entries(KINDS)) {
            const dict = this.dbus.proxies(iface, ROOT_PATH, { watch: false });
            this.proxies[kind] = dict;
            const sync = () => this.sync(kind);
            dict.addEventListener("added", sync);
            dict.addEventListener("changed", sync);
            dict.addEventListener("removed", sync);
        }
        // One watch for everything: the ObjectManager at gpuvirt's root (the Python bridge does
        // not look below the namespace for one, so the path must be exactly this).
        this.watch = this.dbus.watch({ path_namespace: ROOT_PATH });
        this.watch.then(() => {
            this.state.ready = true;
            for (const kind of Object.keys(KINDS)) this.sync(kind);
            this.refreshCan();
            this.refreshDefinitions();
            this.refreshPlan();
        }, err => {
            this.state.closed = (err && (err.problem || err.name)) || "not-found";
            this.state.closedError = err;
            this.emit();
        });
        this.watchSuperuser();
    }

    onChange(fn) { this.listeners.add(fn) }

    emit() {
        for (const fn of this.listeners) {
            try { fn(this.state) } catch (e) { console.error(e) }
        }
    }

    sync(kind) {
        const dict = this.proxies[kind];
        const plain = {};
        for (const path of Object.keys(dict)) {
            if (path[0] !== "/") continue;
            const proxy = dict[path];
            if (proxy && proxy.valid !== false && proxy.data) plain[path] = Object.assign({}, proxy.data);
        }
        if (kind === "manager") {
            const before = this.state.manager;
            this.state.manager = plain[MANAGER_PATH] || null;
            // The policy or the host changed: the plan may have too (PlanPolicy is a read).
            if (this.state.ready && before && this.state.manager && planInputsChanged(before, this.state.manager))
                this.refreshPlan();
        } else {
            this.state[kind] = plain;
            if (kind === "jobs") this.checkJobs();
            if (this.state.ready && (kind === "mdevs" || kind === "parents" || kind === "gpus")) this.scheduleDefinitions();
        }
        this.emit();
    }

    // The Superuser object on Cockpit's internal bus says whether this session is privileged;
    // when it changes, the Can* answers may have too.
    watchSuperuser() {
        try {
            const internal = this.cockpit.dbus(null, { bus: "internal" });
            const su = internal.proxy("cockpit.Superuser", "/superuser");
            su.addEventListener("changed", () => {
                if (su.Current !== this.state.superuser) {
                    this.state.superuser = su.Current;
                    this.emit();
                    if (this.state.ready) this.refreshCan();
                }
            });
            su.wait().then(() => {
                this.state.superuser = su.valid ? (su.Current || "none") : "none";
                this.emit();
            }, () => { this.state.superuser = "none"; this.emit() });
        } catch (e) {
            this.state.superuser = "none";
        }
    }

    async refreshCan() {
        const can = {};
        await Promise.all(Object.entries(PERMISSION_METHOD).map(async ([perm, method]) => {
            try {
                const [answer] = await this.dbus.call(MANAGER_PATH, IFACE.manager, method, [], NO_PROMPT);
                can[perm] = answer;
            } catch (e) {
                can[perm] = "no";
            }
        }));
        this.state.can = can;
        this.emit();
    }

    scheduleDefinitions() {
        clearTimeout(this.defTimer);
        // Definitions and the plan are method answers, not properties: ask again after the
        // inventory moved (debounced: a Reconcile sends a burst of notifies).
        this.defTimer = setTimeout(() => { this.refreshDefinitions(); this.refreshPlan() }, 150);
    }

    async refreshDefinitions() {
        try {
            const [rows] = await this.dbus.call(MANAGER_PATH, IFACE.manager, "ListMdevDefinitions", [{}], { type: "a{sv}" });
            this.state.definitions = rows || [];
            this.state.definitionsError = null;
        } catch (e) {
            this.state.definitionsError = e;
        }
        this.emit();
    }

    async refreshPlan() {
        try {
            const [text, json] = await this.dbus.call(MANAGER_PATH, IFACE.manager, "PlanPolicy", [{}], { type: "a{sv}" });
            this.state.plan = { text, json, error: null };
        } catch (e) {
            this.state.plan = { text: "", json: "", error: e };
        }
        this.emit();
        return this.state.plan;
    }

    /** A request from model.requests: the call exactly as the confirmation showed it. */
    async request(req) {
        try {
            return await this.dbus.call(req.path, req.iface, req.method, req.args, { type: req.signature, flags: "" });
        } finally {
            // A definition changes no property (a manual one creates no device): ask again.
            if (/Mdev$/.test(req.method) && req.iface === IFACE.manager) this.refreshDefinitions();
        }
    }

    /** AssignPassthrough / ReturnToHost with dry-run: the plan text (job is "/"). */
    async dryRun(gpuPath, method) {
        const [, plan] = await this.dbus.call(gpuPath, IFACE.gpu, method,
            [{ "dry-run": this.cockpit.variant("b", true) }], { type: "a{sv}", flags: "" });
        return plan;
    }

    /**
     * Starts AssignPassthrough / ReturnToHost and follows its Job to the end: onProgress gets
     * each (possibly partial) property set; resolves with the final properties. A job "/"
     * means nothing to do: resolves with {Finished, Success, Message: plan}.
     */
    async startJob(gpuPath, method, onProgress) {
        const [job, plan] = await this.dbus.call(gpuPath, IFACE.gpu, method, [{}], { type: "a{sv}", flags: "" });
        if (!job || job === "/") return { Finished: true, Success: true, Progress: 1, Message: plan, Operation: method };
        return new Promise(resolve => {
            this.jobWaiters.set(job, { resolve, onProgress, last: {} });
            // The reply comes before the job ends, but its first notify came before the reply.
            this.checkJobs();
            // Completed is the backstop should the object be gone before we look at it.
            this.dbus.subscribe({ path: job, interface: IFACE.job, member: "Completed" }, (_p, _i, _s, args) => {
                const w = this.jobWaiters.get(job);
                if (!w) return;
                this.jobWaiters.delete(job);
                const final = Object.assign({}, w.last, { Finished: true, Success: !!args[0], Progress: 1 });
                if (!final.Message) final.Message = args[1];
                resolve(final);
            });
        });
    }

    checkJobs() {
        for (const [path, w] of this.jobWaiters) {
            const props = this.state.jobs[path];
            if (!props) continue;
            w.last = Object.assign({}, w.last, props);
            if (w.onProgress) w.onProgress(w.last);
            if (w.last.Finished) {
                this.jobWaiters.delete(path);
                w.resolve(w.last);
            }
        }
    }

    async reconcile() {
        const [ok, report] = await this.dbus.call(MANAGER_PATH, IFACE.manager, "Reconcile", [{}], { type: "a{sv}", flags: "" });
        this.refreshPlan();
        return { ok, report };
    }

    async reloadPolicy() {
        await this.dbus.call(MANAGER_PATH, IFACE.manager, "ReloadPolicy", [{}], { type: "a{sv}", flags: "" });
        return this.refreshPlan();
    }

    async renderHostdev(target) {
        const [xml, args] = await this.dbus.call(MANAGER_PATH, IFACE.manager, "RenderHostdev", [target, {}], { type: "sa{sv}" });
        return { xml, args };
    }
}

function planInputsChanged(a, b) {
    const keys = ["PolicyPath", "EnforcementMode", "PolicyError", "LastApply", "Drift", "RebootRequired"];
    return keys.some(k => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}
