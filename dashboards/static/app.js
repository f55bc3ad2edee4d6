/* presso dashboard: runs, Pareto fronts, per-layer configurations, convergence, comparison.
 *
 * Served by `presso dashboard` (polls the JSON API every 2 s, so a running search updates
 * live) or inlined by `presso report` (window.PRESSO_DATA holds one run; no server, no
 * network). Vanilla JavaScript and Plotly.js; every objective is minimised unless the user
 * ticks "larger is better" for it.
 */
"use strict";
(function () {
  const DATA = window.PRESSO_DATA || null;
  // How often the page asks the server for news: 2 s, or `?poll=SECONDS` in the page's URL.
  const POLL_MS = Math.max(200, 1000 * (Number(new URLSearchParams(location.search).get("poll")) || 2));
  // Beyond this many points a trace draws with WebGL (fast); below, with SVG, which works
  // everywhere (WebGL may be missing: remote desktops, browsers without a GPU).
  const GL_POINTS = 2000;
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  // Names of metrics; "fitness" is the run's own (its evaluator's metric, from the server:
  // KL for a causal LM, cosine distance for an encoder), see useLabels.
  const BASE_LABELS = {
    fitness: "fitness", kl: "KL to dense (calibration)", mean_bits: "mean bits",
    mean_sparsity: "mean sparsity (%)", dropped: "dropped blocks",
    heldout_ppl: "held-out perplexity", heldout_kl: "held-out KL", cos_dist: "cosine distance",
    heldout_cos_dist: "held-out cosine distance",
  };
  let LABELS = { ...BASE_LABELS };
  /** Name metrics as the shown runs' evaluator does: their fitness label when they agree. */
  function useLabels(runs) {
    LABELS = { ...BASE_LABELS };
    const shown = runs.filter((r) => r.meta);
    const fitness = new Set(shown.map((r) => r.meta.fitness));
    if (shown.length && fitness.size === 1) Object.assign(LABELS, shown[0].meta.labels || {});
  }
  /** The evaluator's metric in a sentence: "KL", "cosine distance". */
  const fitnessName = (m) => (m === "kl" ? "KL" : label(m || "fitness"));
  // Kind names, labels, colours and budget metrics come with each run (meta), from presso's kinds.
  const kindLabel = (meta, kind) => (meta.kind_labels || {})[kind] || kind;
  const kindColors = (meta, kind) => (meta.kind_colors || {})[kind] || "Viridis";
  const budgetsOf = (runs) => [...new Set(runs.flatMap((r) => (r.meta && r.meta.budgets) || []))];
  // Metrics that are not objectives: the calibration size is a filter, not a goal.
  const NOT_OBJECTIVES = new Set(["tokens"]);

  // ------------------------------------------------------------------ small helpers

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c == null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const label = (m) => LABELS[m] || m.replace(/_/g, " ");
  // Plotly renders its text (names, hover text, titles, tick labels) as HTML-like markup, in
  // which <a href> becomes a live link: every stored string put there is escaped first.
  const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
  const plotLabel = (m) => esc(label(m));
  const fmt = (v, digits = 4) => (typeof v !== "number" || !isFinite(v) ? "–"
    : Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3)
      : Number.isInteger(v) ? String(v) : v.toPrecision(digits));
  const runKey = (store, name) => `${store}/${name}`;
  const isBaseline = (phase) => phase.startsWith("baseline:");
  const finite = (v) => typeof v === "number" && isFinite(v);

  function message(text, kind = "warn") {
    return h("p", { class: `message ${kind}` }, text);
  }

  // ------------------------------------------------------------------ data access

  async function getJSON(path) {
    try {
      const reply = await fetch(path, { cache: "no-store" });
      // An error comes with its HTTP status and, from the API, a one-line {"error": ...}.
      const json = (reply.headers.get("Content-Type") || "").startsWith("application/json");
      if (!reply.ok && !json) return { error: `the dashboard server answered ${reply.status}` };
      return await reply.json();
    } catch (err) {
      return { error: "the dashboard server is not answering (was it stopped?); retrying" };
    }
  }

  const api = {
    runs() {
      return DATA ? Promise.resolve(DATA.runs) : getJSON("api/runs");
    },
    run(store, name, since) {
      if (DATA) {
        const run = DATA.run;
        const match = run && run.store === store && run.run === name;
        if (!match) return Promise.resolve({ error: `this report holds run ${run.run} only` });
        return Promise.resolve(since ? { ...run, records: [] } : run);
      }
      return getJSON(`api/run?store=${store}&run=${encodeURIComponent(name)}&since=${since}`);
    },
    /** A diffusion run's sample grid of one configuration: {url} of the PNG, or {error}. */
    async samples(store, name, levels) {
      if (DATA) return { error: "sample grids are drawn by the live dashboard (presso dashboard), not in a saved report" };
      const q = `store=${store}&run=${encodeURIComponent(name)}&levels=${levels.join(",")}`;
      try {
        const reply = await fetch(`api/samples?${q}`, { cache: "no-store" });
        if (!reply.ok) {
          const json = (reply.headers.get("Content-Type") || "").startsWith("application/json");
          return json ? await reply.json() : { error: `the dashboard server answered ${reply.status}` };
        }
        return { url: URL.createObjectURL(await reply.blob()) };
      } catch (err) {
        return { error: "the dashboard server is not answering (was it stopped?)" };
      }
    },
    async download(store, name, candidate, file) {
      if (DATA) {
        const entry = ((DATA.exports || {})[candidate] || {})[file];
        if (!entry) return { error: `${file} cannot be written for ${candidate}` };
        return entry;
      }
      const q = `store=${store}&run=${encodeURIComponent(name)}` +
        `&candidate=${encodeURIComponent(candidate)}&file=${encodeURIComponent(file)}`;
      try {
        const reply = await fetch(`api/export?${q}`, { cache: "no-store" });
        if ((reply.headers.get("Content-Type") || "").startsWith("application/json")) {
          return await reply.json();
        }
        const disposition = reply.headers.get("Content-Disposition") || "";
        const m = disposition.match(/filename\*=UTF-8''([^;]+)/);
        return { name: m ? decodeURIComponent(m[1]) : file, text: await reply.text() };
      } catch (err) {
        return { error: "the dashboard server is not answering (was it stopped?)" };
      }
    },
  };

  /** One run's metadata and evaluations, fetched incrementally (`next` = first number to ask). */
  class Run {
    constructor(store, name) {
      Object.assign(this, { store, name, meta: null, sample: null, records: new Map(), next: 0,
        error: null, version: 0, _list: null });
    }

    async refresh() {
      const reply = await api.run(this.store, this.name, this.next);
      if (reply.error) {
        const changed = this.error !== reply.error;
        this.error = reply.error;
        return changed;
      }
      let changed = this.error !== null || !this.meta ||
        this.meta.status !== reply.meta.status ||
        this.meta.finals.length !== reply.meta.finals.length;
      this.error = null;
      this.meta = reply.meta;
      // A report of a large run holds a sample of its evaluations, with the run's counts.
      this.sample = reply.sample || null;
      for (const r of reply.records) {
        if (!this.records.has(r.n)) changed = true;
        this.records.set(r.n, r);
      }
      this.next = reply.next;
      if (reply.more) backlog = true; // more pages of evaluations: ask again at once
      if (changed) { this.version += 1; this._list = null; }
      return changed;
    }

    /** Evaluations in order. */
    list() {
      if (!this._list) this._list = [...this.records.values()].sort((a, b) => a.n - b.n);
      return this._list;
    }

    /** Everything that can be a point: evaluations and the final candidates (held-out). */
    points() {
      if (!this._points || this._pointsVersion !== this.version) {
        const finals = (this.meta ? this.meta.finals : []).map((f) => ({ ...f, final: true }));
        this._points = [...this.list(), ...finals];
        this._pointsVersion = this.version;
      }
      return this._points;
    }

    find(key) {
      if (typeof key === "string" && /^(final|front):/.test(key)) {
        return this.points().find((p) => p.final && p.key === key) || null;
      }
      return this.records.get(Number(key)) || null;
    }

    phases() {
      const seen = [...new Set(this.list().map((r) => r.phase))];
      for (const f of this.meta ? this.meta.finals : []) if (!seen.includes(f.phase)) seen.push(f.phase);
      return seen.sort((a, b) => (a === "search" ? -1 : b === "search" ? 1 : a.localeCompare(b)));
    }

    tokenSizes() {
      return [...new Set(this.list().map((r) => r.tokens).filter((t) => t != null))].sort((a, b) => a - b);
    }
  }

  /** The value of objective `m` of a point (fitness, or a stored metric), or null. */
  function value(p, m) {
    const v = m === "fitness" ? p.fitness : p.metrics[m];
    return finite(v) ? v : null;
  }

  function objectives(runs) {
    const found = new Set();
    for (const run of runs) {
      for (const p of run.points()) {
        if (!p.final && finite(p.fitness)) found.add("fitness");
        for (const [k, v] of Object.entries(p.metrics)) if (finite(v) && !NOT_OBJECTIVES.has(k)) found.add(k);
      }
    }
    const budgets = budgetsOf(runs);
    const order = (m) => (m === "fitness" ? 1 : budgets.includes(m) ? 0 : m.startsWith("heldout_") ? 3 : 2);
    return [...found].sort((a, b) => order(a) - order(b) || a.localeCompare(b));
  }

  /** mask[i]: no other point is at least as good in every coordinate and better in one. */
  function nonDominated(points) {
    const n = points.length;
    const mask = new Array(n).fill(true);
    const dominates = (p, q) => {
      let better = false;
      for (let k = 0; k < p.length; k++) {
        if (p[k] > q[k]) return false;
        if (p[k] < q[k]) better = true;
      }
      return better;
    };
    for (let i = 0; i < n; i++) {
      // A dominated point need not be compared: what it dominates, its dominator does too.
      if (!mask[i]) continue;
      for (let j = 0; j < n; j++) if (j !== i && mask[j] && dominates(points[i], points[j])) mask[j] = false;
    }
    return mask;
  }

  // ------------------------------------------------------------------ state and routing

  const state = {
    stores: null,
    curves: [],
    runs: new Map(),
    opts: { x: null, y: null, z: "", tokens: "all", maximise: new Set(), logy: null, dominated: true },
    picked: new Set(),
    live: null,
  };

  function getRun(store, name) {
    const key = runKey(store, name);
    if (!state.runs.has(key)) state.runs.set(key, new Run(store, name));
    return state.runs.get(key);
  }

  function route() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const q = hash.indexOf("?");
    const path = q < 0 ? hash : hash.slice(0, q);
    const params = new URLSearchParams(q < 0 ? "" : hash.slice(q + 1));
    const m = path.match(/^\/run\/(\d+)\/(.+)$/);
    if (m) return { view: "run", store: Number(m[1]), name: decodeURIComponent(m[2]), sel: params.get("sel") };
    if (path.startsWith("/compare")) {
      const runs = (params.get("runs") || "").split(",").filter(Boolean).map((k) => {
        const i = k.indexOf("/");
        return { store: Number(k.slice(0, i)), name: decodeURIComponent(k.slice(i + 1)) };
      });
      return { view: "compare", runs };
    }
    return { view: "runs" };
  }

  function runHash(store, name, sel) {
    return `#/run/${store}/${encodeURIComponent(name)}` + (sel != null ? `?sel=${encodeURIComponent(sel)}` : "");
  }

  /** A run as it appears in a compare link: `STORE/NAME` with the name URL-encoded. */
  const pickKey = (store, name) => `${store}/${encodeURIComponent(name)}`;

  let current = null; // the view on screen: {render(), update()}

  async function show() {
    const r = route();
    document.querySelectorAll("nav a").forEach((a) => a.classList.remove("active"));
    const nav = document.getElementById(r.view === "compare" ? "nav-compare" : "nav-runs");
    if (nav) nav.classList.add("active");
    if (current && current.same && current.same(r)) { current.route(r); return; }
    purgePlots();
    const view = document.getElementById("view");
    view.replaceChildren(h("p", { class: "muted" }, "loading…"));
    current = r.view === "run" ? new RunView(r) : r.view === "compare" ? new CompareView(r) : new RunsView();
    await current.start();
  }

  function purgePlots() {
    document.querySelectorAll(".js-plotly-plot").forEach((gd) => Plotly.purge(gd));
  }

  function setLive(ok, text) {
    const live = document.getElementById("live");
    if (!live) return;
    if (DATA) {
      live.className = "live static";
      live.textContent = `report · ${DATA.generated || ""}`;
      return;
    }
    live.className = ok ? "live on" : "live off";
    live.textContent = text;
  }

  /** Set by a run's refresh when the server has more pages of its evaluations. */
  let backlog = false;

  async function poll() {
    backlog = false;
    if (current && current.poll) {
      try { await current.poll(); } catch (err) { console.error(err); }
    }
    if (!DATA) setTimeout(poll, backlog ? 0 : POLL_MS);
  }

  async function loadRuns() {
    const reply = await api.runs();
    if (reply.error) { setLive(false, "offline"); return { error: reply.error }; }
    state.stores = reply.stores;
    state.curves = reply.curves || [];
    setLive(true, `live · ${new Date().toLocaleTimeString()}`);
    return reply;
  }

  function allRuns() {
    const out = [];
    for (const s of state.stores || []) for (const r of s.runs) out.push({ store: s.id, label: s.label, ...r });
    return out;
  }

  // ------------------------------------------------------------------ the runs page

  class RunsView {
    same(r) { return r.view === "runs"; }
    route() {}

    async start() {
      await this.poll(true);
    }

    async poll(first) {
      const before = JSON.stringify([state.stores, state.curves]);
      const reply = await loadRuns();
      if (!first && JSON.stringify([state.stores, state.curves]) === before && !reply.error) return;
      this.render(reply.error);
    }

    render(error) {
      const view = document.getElementById("view");
      const parts = [h("h1", {}, "Runs")];
      if (error) parts.push(message(error, "error"));
      for (const store of state.stores || []) parts.push(this.storeCard(store));
      if (state.curves.length) parts.push(curvesCard());
      const compare = h("button", {
        id: "compare-button",
        onclick: () => { location.hash = `#/compare?runs=${[...state.picked].join(",")}`; },
      }, "Compare selected runs");
      compare.disabled = state.picked.size < 1;
      parts.push(h("div", { class: "actions" }, compare,
        h("span", { class: "muted" }, " tick runs (any store) to overlay their fronts and convergence")));
      document.querySelectorAll("#bench-convergence").forEach((gd) => Plotly.purge(gd));
      view.replaceChildren(...parts);
      if (state.curves.length) renderCurves();
    }

    storeCard(store) {
      const card = h("section", { class: "card", "data-store": store.id },
        h("h2", {}, store.label));
      if (store.error) { card.append(message(store.error, "error")); return card; }
      if (store.notice) { card.append(message(store.notice, "info")); return card; }
      if (!store.runs.length) {
        card.append(message("no runs in this store yet — start one with `presso search EXPERIMENT.yaml`", "info"));
        return card;
      }
      const head = ["", "run", "status", "evaluations", "model", "strategy", "budget",
        "held-out (final candidates)", "sweep", "started", "last evaluation"];
      // A sweep's runs open together in the compare view (their fronts and the joint front).
      const sweepRuns = {};
      for (const r of store.runs) if (r.sweep) (sweepRuns[r.sweep] ||= []).push(pickKey(store.id, r.name));
      const rows = store.runs.map((r) => {
        const key = pickKey(store.id, r.name);
        const box = h("input", {
          type: "checkbox", class: "pick", "data-key": key,
          onchange: (e) => {
            if (e.target.checked) state.picked.add(key); else state.picked.delete(key);
            document.getElementById("compare-button").disabled = state.picked.size < 1;
          },
        });
        box.checked = state.picked.has(key);
        const heldout = Object.entries(r.candidates).map(([phase, c]) => {
          // Perplexity where measured, else the evaluator's own metric (an encoder's cosine distance).
          const m = (r.heldout_metrics || ["ppl", "kl"]).find((k) => c.heldout[k] != null);
          const text = m == null ? "–" : `${m === "ppl" ? "ppl" : fitnessName(m)} ${fmt(c.heldout[m])}`;
          return h("div", {}, h("span", { class: "muted" }, `${phase}: `), text);
        });
        const budget = Object.entries(r.budget).map(([k, v]) => `${label(k)} ${fmt(v)}`).join(", ");
        return h("tr", { "data-run": r.name },
          h("td", {}, box),
          h("td", {}, h("a", { href: runHash(store.id, r.name), class: "run-link" }, r.name)),
          h("td", {}, h("span", { class: `badge ${r.status}` }, r.status)),
          h("td", { class: "num" }, r.evaluations),
          h("td", {}, r.model), h("td", {}, r.strategy), h("td", {}, budget || "–"),
          h("td", {}, heldout.length ? heldout : "–"),
          h("td", {}, r.sweep ? h("a", { href: `#/compare?runs=${sweepRuns[r.sweep].join(",")}`, class: "sweep-link" }, r.sweep) : "–"),
          h("td", { class: "muted" }, r.started.replace("T", " ")),
          h("td", { class: "muted" }, r.updated.replace("T", " ")));
      });
      card.append(h("table", { class: "runs" },
        h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))), h("tbody", {}, rows)));
      return card;
    }
  }

  // ------------------------------------------------------------------ convergence benchmarks

  // Reports of experiments/benchmarks/convergence.py (`presso dashboard --curves FILE`): the
  // best-so-far held-out metric against evaluations, the sensitivity table's evaluations counted
  // first (a search that starts from the table has paid for it). Q* is the final value of the
  // longest run (the plateau reference); the table says when each curve came within 1%.
  const curveX = (c, p) => c.table_evaluations + p.evaluations;
  const curveMetric = (m) => ({ ppl: "perplexity", cos_dist: "cosine distance" })[m] || label(m);

  function reference(curves) {
    const runs = curves.filter((c) => !c.error && c.points.length);
    if (!runs.length) return null;
    const longest = runs.reduce((a, b) => (curveX(b, b.points.at(-1)) > curveX(a, a.points.at(-1)) ? b : a));
    return { label: longest.label, value: longest.points.at(-1).value };
  }

  function curvesCard() {
    const q = reference(state.curves);
    const head = ["report", "budget", "options", "table evaluations", "evaluations", "final",
      q ? `evaluations to within 1% of Q* = ${fmt(q.value)} (${q.label})` : "within 1% of Q*"];
    const rows = state.curves.map((c) => {
      if (c.error) return h("tr", { "data-curve": c.file }, h("td", { colspan: head.length }, message(c.error, "error")));
      const last = c.points.at(-1);
      const hit = q ? c.points.find((p) => p.value <= 1.01 * q.value) : null;
      return h("tr", { "data-curve": c.file },
        h("td", {}, c.label), h("td", { class: "num" }, fmt(c.budget)),
        h("td", { class: "muted" }, JSON.stringify(c.options)),
        h("td", { class: "num" }, c.table_evaluations),
        h("td", { class: "num" }, last ? last.evaluations : 0),
        h("td", { class: "num" }, last ? `${curveMetric(c.metric)} ${fmt(last.value)}` : "–"),
        h("td", { class: "num" }, hit ? curveX(c, hit) : "not yet"));
    });
    return h("section", { class: "card", id: "curves-card" },
      h("h2", {}, "Convergence benchmarks"),
      h("div", { id: "bench-convergence", class: "plot" }),
      h("table", { class: "runs" },
        h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))), h("tbody", {}, rows)));
  }

  function renderCurves() {
    const curves = state.curves.filter((c) => !c.error);
    const colours = phaseColours(curves.map((c) => c.file));
    const traces = curves.map((c) => ({
      type: "scatter", mode: "lines+markers", name: esc(`${c.label} (held-out ${curveMetric(c.metric)})`),
      x: c.points.map((p) => curveX(c, p)), y: c.points.map((p) => p.value),
      line: { color: colours[c.file], shape: "hv", width: 2 }, marker: { size: 5 },
      hovertemplate: `${esc(c.label)}: %{y:.4g} after %{x} evaluations<extra></extra>`,
    }));
    // References measured in the same run as each curve (uniform, every unit at its top level).
    const xs = traces.flatMap((t) => t.x);
    const span = xs.length ? [0, Math.max(...xs)] : [0, 1];
    const seen = new Set();
    for (const c of curves) {
      for (const [name, value] of Object.entries(c.references)) {
        const key = `${name}=${value}`;
        if (seen.has(key)) continue;
        seen.add(key);
        traces.push({ type: "scatter", mode: "lines", name: esc(`${name}: ${fmt(value)}`), x: span, y: [value, value],
          line: { color: "#7f7f7f", dash: name === "uniform" ? "dash" : "dot", width: 1 }, hoverinfo: "name" });
      }
    }
    const metric = curves.length ? curves[0].metric : "ppl";
    Plotly.react(document.getElementById("bench-convergence"), traces, {
      margin: { l: 70, r: 20, t: 10, b: 45 }, height: 360, hovermode: "closest",
      xaxis: { title: { text: "evaluations (sensitivity table included)" } },
      yaxis: { title: { text: `held-out ${esc(curveMetric(metric))} of the best so far` }, type: "log" },
      legend: { orientation: "h", y: -0.22 }, font: { size: 12 },
    }, { responsive: true, displaylogo: false });
  }

  // ------------------------------------------------------------------ the run page

  class RunView {
    constructor(r) {
      this.r = r;
      this.run = getRun(r.store, r.name);
      this.rendered = -1;
    }

    same(r) { return r.view === "run" && r.store === this.r.store && r.name === this.r.name; }

    route(r) {
      this.r = r;
      if (!this.run.meta) return;
      this.renderConfig();
      this.renderPareto();
    }

    async start() {
      const view = document.getElementById("view");
      view.replaceChildren(
        h("div", { class: "run-head" }, h("h1", { id: "run-title" }, this.run.name),
          h("span", { id: "run-status" })),
        h("p", { id: "run-facts", class: "muted" }),
        h("div", { id: "run-message" }),
        h("section", { class: "card" },
          h("h2", {}, "Pareto front"),
          h("div", { id: "controls", class: "controls" }),
          h("p", { id: "pareto-note", class: "muted" }),
          h("div", { id: "pareto", class: "plot" })),
        h("section", { class: "card", id: "config-card", hidden: true },
          h("div", { id: "config" })),
        h("section", { class: "card" },
          h("h2", {}, "Convergence"),
          h("p", { class: "muted" }, "fitness of each evaluation in the order they ran; lines: best so far per phase and calibration size (fitness at different sizes is scored on different data)"),
          h("div", { id: "convergence", class: "plot" })),
        h("section", { class: "card", id: "export-card" }, h("h2", {}, "Export"), h("div", { id: "export" })));
      await this.poll();
    }

    async poll() {
      const changed = await this.run.refresh();
      if (!DATA) setLive(!this.run.error, this.run.error ? "offline" : `live · ${new Date().toLocaleTimeString()}`);
      if (changed || this.rendered !== this.run.version) this.render();
    }

    render() {
      this.rendered = this.run.version;
      const msg = document.getElementById("run-message");
      msg.replaceChildren(...(this.run.error ? [message(this.run.error, "error")] : []));
      if (!this.run.meta) return;
      useLabels([this.run]);
      const meta = this.run.meta;
      const exp = meta.experiment || {};
      const list = this.run.list();
      const sample = this.run.sample;
      const sampled = sample && sample.shown < sample.evaluations;
      const failed = sampled ? sample.failed : list.filter((r) => r.fitness == null).length;
      const evaluations = sampled
        ? `${sample.evaluations} evaluations` + (failed ? ` (${failed} failed)` : "") +
          `; this report holds ${list.length} of them: every new best and an even sample`
        : `${list.length} evaluations` + (failed ? ` (${failed} failed, not plotted)` : "");
      document.getElementById("run-status").replaceChildren(h("span", { class: `badge ${meta.status}` }, meta.status));
      const budget = Object.entries(exp.space || {}).filter(([, v]) => finite(v))
        .map(([k, v]) => `${label(k)} ≤ ${fmt(v)}`).join(", ");
      document.getElementById("run-facts").textContent =
        `${exp.model || "?"} · ${(exp.search || {}).strategy || "?"} · ${meta.units.length} units · ` +
        `${budget || "no budget"} · ${evaluations}`;
      this.renderControls();
      this.renderPareto();
      this.renderConvergence();
      this.renderConfig();
      this.renderExport();
    }

    renderControls() {
      const objs = objectives([this.run]);
      const o = state.opts;
      if (!objs.includes(o.x)) o.x = budgetsOf([this.run]).find((m) => objs.includes(m)) || objs[0] || null;
      if (!objs.includes(o.y) || o.y === o.x) o.y = ["kl", "fitness", "cos_dist"].find((m) => objs.includes(m) && m !== o.x) || objs.find((m) => m !== o.x) || null;
      if (o.z && !objs.includes(o.z)) o.z = "";
      const sizes = this.run.tokenSizes();
      if (o.tokens !== "all" && !sizes.includes(Number(o.tokens))) o.tokens = "all";
      // Rebuilt only when something in them changes: a live update must not close an open list.
      const signature = JSON.stringify([objs, sizes, o.x, o.y, o.z, o.tokens, [...o.maximise]]);
      if (signature === this.controls) return;
      this.controls = signature;
      const sel = (id, options, chosen, onchange) => {
        const s = h("select", { id, onchange: (e) => { onchange(e.target.value); this.render(); } },
          options.map(([v, t]) => h("option", { value: v }, t)));
        s.value = chosen == null ? "" : String(chosen);
        return s;
      };
      const axis = (name, key) => {
        const opts = key === "z" ? [["", "— (2D)"], ...objs.map((m) => [m, label(m)])] : objs.map((m) => [m, label(m)]);
        const box = h("input", { type: "checkbox", id: `max-${key}`, onchange: (e) => {
          if (e.target.checked) o.maximise.add(o[key]); else o.maximise.delete(o[key]);
          this.render();
        } });
        box.checked = o.maximise.has(o[key]);
        box.disabled = !o[key];
        return h("label", {}, `${name} `, sel(`obj-${key}`, opts, o[key], (v) => { o[key] = v; }),
          h("span", { class: "flip", title: "maximise this objective instead of minimising it" }, box, " larger is better"));
      };
      const tokens = sel("tokens", [["all", "all (colour: phase)"], ...sizes.map((t) => [String(t), `${t} tokens`])],
        o.tokens, (v) => { o.tokens = v; });
      document.getElementById("controls").replaceChildren(axis("x", "x"), axis("y", "y"), axis("z", "z"),
        h("label", {}, "calibration size ", tokens));
    }

    /** The points drawn with the current objectives and filter, with the front mask. */
    plotted() {
      const o = state.opts;
      const axes = [o.x, o.y, o.z].filter(Boolean);
      const pts = this.run.points().filter((p) =>
        (p.final || o.tokens === "all" || String(p.tokens) === o.tokens) &&
        axes.every((m) => value(p, m) != null));
      const coords = pts.map((p) => axes.map((m) => (o.maximise.has(m) ? -1 : 1) * value(p, m)));
      return { axes, pts, mask: nonDominated(coords) };
    }

    renderPareto() {
      const o = state.opts;
      const gd = document.getElementById("pareto");
      const { axes, pts, mask } = this.plotted();
      const note = document.getElementById("pareto-note");
      if (axes.length < 2) {
        note.textContent = "no two numeric objectives to plot yet";
        Plotly.purge(gd);
        return;
      }
      const three = axes.length === 3;
      const front = mask.filter(Boolean).length;
      note.textContent = `${pts.length} points, ${front} on the front (faded: dominated). ` +
        "Diamonds: baselines; stars: final candidates, hexagrams: front points scored held-out (on held-out axes). Click a point for its per-layer configuration.";
      const traces = [];
      const colours = phaseColours(this.run.phases());
      const groups = new Map();
      pts.forEach((p, i) => {
        const key = `${p.final ? p.kind : "eval"}|${p.phase}|${mask[i] ? 1 : 0}`;
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(p);
      });
      const keys = [...groups.keys()].sort();
      for (const key of keys) {
        const [kind, phase, onFront] = key.split("|");
        const members = groups.get(key);
        const final = kind !== "eval";
        const symbol = kind === "candidate" ? "star" : kind === "front" ? "hexagram" : isBaseline(phase) ? "diamond" : "circle";
        const dominated = onFront === "0";
        const trace = {
          type: three ? "scatter3d" : members.length > GL_POINTS ? "scattergl" : "scatter",
          mode: "markers",
          name: esc(kind === "candidate" ? `final: ${phase}` : kind === "front" ? `held-out front: ${phase}` : phase),
          legendgroup: key.slice(0, key.lastIndexOf("|")),
          showlegend: !dominated || !keys.includes(key.slice(0, -1) + "1"),
          x: members.map((p) => value(p, axes[0])),
          y: members.map((p) => value(p, axes[1])),
          customdata: members.map((p) => (p.final ? p.key : p.n)),
          hovertext: members.map(hoverText),
          hoverinfo: "text",
          opacity: dominated ? 0.22 : 1,
          marker: { color: colours[phase], symbol: three && final ? "diamond" : symbol,
            size: (kind === "candidate" ? 16 : final ? 13 : isBaseline(phase) ? 12 : 9) * (three ? 0.6 : 1),
            line: { color: "#fff", width: three ? 0 : 1 } },
          meta: { kind: "points", front: !dominated },
        };
        if (three) trace.z = members.map((p) => value(p, axes[2]));
        traces.push(trace);
      }
      if (!three && front > 1) {
        const line = pts.filter((_, i) => mask[i]).map((p) => [value(p, axes[0]), value(p, axes[1])])
          .sort((a, b) => (o.maximise.has(axes[0]) ? b[0] - a[0] : a[0] - b[0]));
        traces.unshift({ type: "scatter", mode: "lines", name: "Pareto front", hoverinfo: "skip",
          x: line.map((p) => p[0]), y: line.map((p) => p[1]),
          line: { color: "#555", width: 1.5, dash: "dot", shape: "hv" }, meta: { kind: "front-line" } });
      }
      const chosen = this.r.sel != null ? pts.find((p) => String(p.final ? p.key : p.n) === String(this.r.sel)) : null;
      if (chosen) {
        const ring = { type: three ? "scatter3d" : "scatter", mode: "markers", name: "selected", hoverinfo: "skip",
          x: [value(chosen, axes[0])], y: [value(chosen, axes[1])], showlegend: false,
          marker: { symbol: three ? "circle-open" : "circle-open", size: three ? 12 : 20, color: "#d62728", line: { width: 2.5, color: "#d62728" } },
          meta: { kind: "selected" } };
        if (three) ring.z = [value(chosen, axes[2])];
        traces.push(ring);
      }
      const title = (m) => `${plotLabel(m)} ${o.maximise.has(m) ? "↑" : "↓"}`;
      const layout = {
        uirevision: `${this.run.store}/${this.run.name}/${axes.join(",")}/${o.tokens}`,
        margin: { l: 70, r: 20, t: 10, b: 55 }, height: 470, hovermode: "closest",
        legend: { orientation: "h", y: -0.18 }, font: { size: 12 },
      };
      if (three) {
        layout.scene = { xaxis: { title: { text: title(axes[0]) } }, yaxis: { title: { text: title(axes[1]) } },
          zaxis: { title: { text: title(axes[2]) } } };
        layout.legend.y = 0;
      } else {
        layout.xaxis = { title: { text: title(axes[0]) }, zeroline: false };
        layout.yaxis = { title: { text: title(axes[1]) }, zeroline: false, exponentformat: "power" };
      }
      Plotly.react(gd, traces, layout, { responsive: true, displaylogo: false });
      if (!gd._pressoClick) {
        gd._pressoClick = true;
        gd.on("plotly_click", (ev) => this.select(ev.points[0].customdata));
      }
    }

    select(key) {
      if (key == null) return;
      history.replaceState(null, "", runHash(this.run.store, this.run.name, key));
      this.r = route();
      this.renderConfig();
      this.renderPareto();
      document.getElementById("config-card").scrollIntoView({ behavior: "smooth", block: "start" });
    }

    renderConvergence() {
      const gd = document.getElementById("convergence");
      const o = state.opts;
      const list = this.run.list().filter((r) => r.fitness != null && (o.tokens === "all" || String(r.tokens) === o.tokens));
      const colours = phaseColours(this.run.phases());
      const traces = [];
      for (const phase of this.run.phases()) {
        const mine = list.filter((r) => r.phase === phase);
        if (!mine.length) continue;
        traces.push({ type: mine.length > GL_POINTS ? "scattergl" : "scatter", mode: "markers", name: esc(phase), legendgroup: phase,
          x: mine.map((r) => r.n), y: mine.map((r) => r.fitness), customdata: mine.map((r) => r.n),
          hovertext: mine.map(hoverText), hoverinfo: "text", opacity: 0.55,
          marker: { color: colours[phase], size: 6, symbol: isBaseline(phase) ? "diamond" : "circle" } });
        const sizes = [...new Set(mine.map((r) => r.tokens))];
        sizes.sort((a, b) => (b ?? 0) - (a ?? 0));
        for (const [k, t] of sizes.entries()) {
          let best = Infinity;
          const xs = [], ys = [];
          for (const r of mine.filter((q) => q.tokens === t)) {
            best = Math.min(best, r.fitness);
            xs.push(r.n); ys.push(best);
          }
          traces.push({ type: "scatter", mode: "lines", name: esc(`${phase} best`) + (sizes.length > 1 ? ` (${t} tokens)` : ""),
            legendgroup: phase, x: xs, y: ys, hoverinfo: "x+y",
            line: { color: colours[phase], shape: "hv", width: 2, dash: ["solid", "dash", "dot", "dashdot"][k % 4] } });
        }
      }
      const ys = list.map((r) => r.fitness).filter((v) => v > 0);
      const logy = ys.length && Math.max(...ys) / Math.min(...ys) > 100;
      Plotly.react(gd, traces, {
        uirevision: `${this.run.store}/${this.run.name}/${o.tokens}`,
        margin: { l: 70, r: 20, t: 10, b: 45 }, height: 360, hovermode: "closest",
        xaxis: { title: { text: "evaluation" } },
        yaxis: { title: { text: `fitness (${fitnessName(this.run.meta.fitness)}, lower is better)` }, type: logy ? "log" : "linear", exponentformat: "power" },
        legend: { orientation: "h", y: -0.22 }, font: { size: 12 },
      }, { responsive: true, displaylogo: false });
      if (!gd._pressoClick) {
        gd._pressoClick = true;
        gd.on("plotly_click", (ev) => this.select(ev.points[0].customdata));
      }
    }

    renderConfig() {
      const card = document.getElementById("config-card");
      const box = document.getElementById("config");
      const sel = this.r.sel;
      const p = sel != null && this.run.meta ? this.run.find(sel) : null;
      if (!p) {
        this.shown = null;
        card.hidden = sel == null;
        if (sel != null && this.run.meta) box.replaceChildren(message(`no evaluation ${sel} in this run (yet)`));
        return;
      }
      // Evaluations never change once stored: a live update redraws this view only when the
      // selection does (or a final candidate's data arrives).
      if (this.shown === p) return;
      this.shown = p;
      box.querySelectorAll(".js-plotly-plot").forEach((gd) => Plotly.purge(gd));
      card.hidden = false;
      const meta = this.run.meta;
      const title = p.kind === "front" ? `Pareto-front point ${p.key.slice(6)} of ${p.phase}, scored held-out`
        : p.final ? `Final candidate: ${p.phase} (${p.strategy})` : `Evaluation #${p.n}: ${p.tag || "(no tag)"}`;
      const rows = p.final ? [["phase", p.phase], ["chosen as", p.kind === "front" ? "Pareto-front point" : `winner (${p.strategy})`]]
        : [["phase", p.phase], ["step / index", `${p.step} / ${p.index}`], ["tag", p.tag],
          ["calibration tokens", p.tokens], ["fitness", fmt(p.fitness, 6)],
          ["seconds", fmt(p.seconds, 3)]];
      for (const [k, v] of Object.entries(p.metrics)) if (k !== "tokens") rows.push([label(k), fmt(v, 6)]);
      if (p.error) rows.push(["error", p.error]);
      const table = h("table", { class: "metrics", id: "config-metrics" },
        h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v == null ? "–" : v)))));
      const parts = [h("h2", { id: "config-title" }, title), h("div", { class: "config-grid" }, table,
        h("div", { class: "config-plots", id: "config-plots" }))];
      const latency = latencySection(this.run, p);
      if (latency) parts.push(latency);
      if (meta.kinds.includes("steps")) parts.push(samplesSection(this.run, p));
      box.replaceChildren(...parts);
      const plots = document.getElementById("config-plots");
      const kinds = [...new Set(meta.kinds)];
      for (const kind of kinds) {
        const heat = h("div", { class: "plot heat", id: `heatmap-${kind}`, "data-kind": kind });
        const bars = h("div", { class: "plot bars", id: `bars-${kind}`, "data-kind": kind });
        plots.append(h("h3", {}, `per-layer ${kindLabel(meta, kind)}`), heat, bars);
        drawUnits(meta, p.levels, kind, heat, bars);
      }
    }

    renderExport() {
      const box = document.getElementById("export");
      const finals = this.run.meta.finals;
      if (!finals.length) {
        box.replaceChildren(message("export is available once the run has finished (its chosen configurations are scored held-out then)", "info"));
        box.dataset.ready = "";
        return;
      }
      if (box.dataset.ready === String(finals.length)) return;
      box.dataset.ready = String(finals.length);
      const cand = h("select", { id: "export-candidate" }, finals.map((f) => h("option", { value: f.phase }, `${f.phase} (${f.strategy})`)));
      const file = h("select", { id: "export-file" },
        h("option", { value: "plan.json" }, "presso plan (.json)"),
        h("option", { value: "plan.yaml" }, "presso plan (.yaml)"),
        h("option", { value: "evopress.txt" }, "EvoPress text (.txt)"));
      const note = h("span", { class: "muted", id: "export-note" });
      const button = h("button", { id: "export-button", onclick: async () => {
        note.textContent = "";
        const got = await api.download(this.run.store, this.run.name, cand.value, file.value);
        if (got.error) { note.replaceChildren(message(got.error, "error")); return; }
        const a = h("a", { href: URL.createObjectURL(new Blob([got.text], { type: "text/plain" })), download: got.name });
        document.body.append(a);
        a.click();
        a.remove();
        note.textContent = `downloaded ${got.name} (the same file as \`presso export\`)`;
      } }, "Download");
      box.replaceChildren(h("div", { class: "controls" }, h("label", {}, "candidate ", cand),
        h("label", {}, "file ", file), button, note));
    }
  }

  function hoverText(p) {
    const head = p.kind === "front" ? `<b>held-out front point ${p.key.slice(6)}</b>`
      : p.final ? `<b>final: ${esc(p.phase)}</b> (${esc(p.strategy)})` : `<b>${esc(p.tag || "evaluation")}</b> #${p.n}`;
    const lines = [head, `phase: ${esc(p.phase)}`];
    const bits = p.metrics.mean_bits;
    if (bits != null) lines.push(`mean bits: ${fmt(bits)}`);
    if (!p.final) {
      lines.push(`fitness: ${fmt(p.fitness, 5)}`, `tokens: ${p.tokens == null ? "–" : p.tokens}`);
    }
    for (const [k, v] of Object.entries(p.metrics)) {
      if (k !== "mean_bits" && k !== "tokens" && k !== "kl") lines.push(`${plotLabel(k)}: ${fmt(v, 5)}`);
    }
    return lines.join("<br>");
  }

  function phaseColours(phases) {
    const out = {};
    phases.forEach((p, i) => { out[p] = PALETTE[i % PALETTE.length]; });
    return out;
  }

  /** Heatmap (blocks × unit kinds) and bars (one per unit, in order) of one kind of level. */
  function drawUnits(meta, levels, kind, heat, bars) {
    const g = meta.grid;
    const idx = meta.kinds.map((k, i) => (k === kind ? i : -1)).filter((i) => i >= 0);
    const sums = g.rows.map(() => g.cols.map(() => 0));
    const counts = g.rows.map(() => g.cols.map(() => 0));
    // What a cell's one unit keeps in the model's terms (heads, FFN width), where the run
    // names its levels; a cell averaging several units shows the mean value instead.
    const named = g.rows.map(() => g.cols.map(() => null));
    for (const i of idx) {
      const [r, c] = g.cells[i];
      sums[r][c] += levels[i];
      counts[r][c] += 1;
      named[r][c] = ((meta.level_names || [])[i] || {})[String(levels[i])] || null;
    }
    const usedCols = g.cols.map((_, c) => counts.some((row) => row[c] > 0));
    const cols = g.cols.filter((_, c) => usedCols[c]);
    const z = sums.map((row, r) => row.filter((_, c) => usedCols[c]).map((s, j) => {
      const c = g.cols.indexOf(cols[j]);
      return counts[r][c] ? s / counts[r][c] : null;
    }));
    const rows = g.rows.map((r) => (r === "-" ? "other" : `block ${r}`));
    const values = idx.map((i) => levels[i]);
    const scale = kindColors(meta, kind);
    // Colour by the position among the kind's levels (2, 3, 4, 8 bits evenly apart), over
    // all of them, so that a colour means the same level in every configuration.
    const levelsOfKind = (meta.level_values || {})[kind] || [...new Set(values)].sort((a, b) => a - b);
    const position = (v) => {
      if (v == null) return null;
      const L = levelsOfKind;
      if (v <= L[0]) return 0;
      for (let k = 1; k < L.length; k++) if (v <= L[k]) return k - 1 + (v - L[k - 1]) / (L[k] - L[k - 1]);
      return L.length - 1;
    };
    Plotly.react(heat, [{
      type: "heatmap", z: z.map((row) => row.map(position)), x: cols.map(esc), y: rows.map(esc), colorscale: scale,
      zmin: 0, zmax: Math.max(1, levelsOfKind.length - 1), customdata: z,
      text: z.map((row, r) => row.map((v, j) => {
        if (v == null) return "";
        const c = g.cols.indexOf(cols[j]);
        return counts[r][c] === 1 && named[r][c] ? esc(named[r][c]) : fmt(v, 3);
      })), texttemplate: "%{text}",
      hovertemplate: "%{y}, %{x}: %{text}<extra></extra>", xgap: 2, ygap: 2,
      colorbar: { title: { text: esc(kindLabel(meta, kind)) }, thickness: 12,
        tickvals: levelsOfKind.map((_, k) => k), ticktext: levelsOfKind.map((v) => fmt(v, 3)) },
      meta: { kind: "heatmap", unitKind: kind },
    }], {
      height: Math.max(220, 40 + 26 * rows.length), margin: { l: 80, r: 10, t: 10, b: 60 },
      yaxis: { autorange: "reversed", type: "category" }, xaxis: { type: "category", side: "bottom" },
      font: { size: 11 },
    }, { responsive: true, displaylogo: false });
    const names = idx.map((i) => {
      const [r, c] = g.cells[i];
      return `${g.rows[r]}.${g.cols[c]}`;
    });
    const colColours = {};
    cols.forEach((c, i) => { colColours[c] = PALETTE[i % PALETTE.length]; });
    Plotly.react(bars, [{
      type: "bar", x: names.map(esc), y: values, meta: { kind: "bars", unitKind: kind },
      marker: { color: idx.map((i) => colColours[g.cols[g.cells[i][1]]]) },
      hovertext: idx.map((i) => `${esc(meta.units[i])}: ${levels[i]}`), hoverinfo: "text",
    }], {
      height: 230, margin: { l: 50, r: 10, t: 10, b: 70 }, bargap: 0.1,
      xaxis: { type: "category", tickangle: -60, tickfont: { size: 9 } },
      yaxis: { title: { text: esc(kindLabel(meta, kind)) }, range: [0, Math.max(...levelsOfKind, ...values) * 1.05] }, font: { size: 11 },
    }, { responsive: true, displaylogo: false });
  }

  /** A diffusion configuration's samples: a grid the server draws from fixed noise, the same
   * draws for every configuration of the run, so that grids compare image by image. */
  function samplesSection(run, p) {
    const title = h("h3", {}, "Samples of this configuration (32 images, the same noise for every configuration)");
    const section = h("div", { id: "samples" }, title, message("sampling…", "info"));
    api.samples(run.store, run.name, p.levels).then((got) => {
      if (got.error) section.replaceChildren(title, message(got.error, "error"));
      else section.replaceChildren(title, h("img", { id: "samples-grid", src: got.url, alt: "sample grid" }));
    });
    return section;
  }

  /** "Predicted vs measured latency", shown only when the run stores latency metrics. */
  function latencySection(run, p) {
    const keys = new Set();
    for (const r of run.points()) for (const k of Object.keys(r.metrics)) if (/latency/i.test(k)) keys.add(k);
    if (!keys.size) return null;
    const predicted = [...keys].find((k) => /pred/i.test(k));
    const measured = [...keys].find((k) => /meas/i.test(k));
    const rows = [...keys].sort().map((k) => h("tr", {}, h("th", {}, label(k)), h("td", {}, fmt(p.metrics[k], 5))));
    const section = h("div", { id: "latency" }, h("h3", {}, "Predicted vs measured latency"),
      h("table", { class: "metrics" }, h("tbody", {}, rows)));
    if (predicted && measured) {
      const both = run.points().filter((r) => finite(r.metrics[predicted]) && finite(r.metrics[measured]));
      const gd = h("div", { class: "plot", id: "latency-plot" });
      section.append(gd);
      const xs = both.map((r) => r.metrics[predicted]), ys = both.map((r) => r.metrics[measured]);
      const lo = Math.min(...xs, ...ys), hi = Math.max(...xs, ...ys);
      setTimeout(() => Plotly.react(gd, [
        { type: "scatter", mode: "markers", name: "evaluations", x: xs, y: ys, opacity: 0.5,
          hovertext: both.map(hoverText), hoverinfo: "text" },
        { type: "scatter", mode: "lines", name: "predicted = measured", x: [lo, hi], y: [lo, hi], line: { dash: "dot", color: "#888" } },
        { type: "scatter", mode: "markers", name: "this configuration", x: [p.metrics[predicted]], y: [p.metrics[measured]],
          marker: { size: 14, color: "#d62728", symbol: "x" } },
      ], { height: 320, margin: { l: 60, r: 10, t: 10, b: 50 }, xaxis: { title: { text: plotLabel(predicted) } },
        yaxis: { title: { text: plotLabel(measured) } } }, { responsive: true, displaylogo: false }));
    }
    return section;
  }

  // ------------------------------------------------------------------ the compare page

  class CompareView {
    constructor(r) { this.r = r; }
    same(r) { return r.view === "compare" && JSON.stringify(r.runs) === JSON.stringify(this.r.runs); }
    route(r) { this.r = r; }

    async start() {
      const view = document.getElementById("view");
      view.replaceChildren(h("h1", {}, "Compare runs"),
        h("section", { class: "card" }, h("h2", {}, "Runs"), h("div", { id: "pick" })),
        h("section", { class: "card" }, h("h2", {}, "Pareto fronts"), h("div", { id: "cmp-controls", class: "controls" }),
          h("p", { class: "muted", id: "cmp-note" }), h("div", { id: "cmp-pareto", class: "plot" })),
        h("section", { class: "card" }, h("h2", {}, "Convergence"),
          h("p", { class: "muted" }, "best fitness so far of each run's search phase, by evaluation"),
          h("div", { id: "cmp-convergence", class: "plot" })));
      this.rendered = "";
      await this.poll();
    }

    runs() { return this.r.runs.map((x) => getRun(x.store, x.name)); }

    async poll() {
      const reply = await loadRuns();
      await Promise.all(this.runs().map((r) => r.refresh()));
      const signature = JSON.stringify([state.stores, this.runs().map((r) => [r.version, r.error]), state.opts.x, state.opts.y, state.opts.tokens, [...state.opts.maximise], state.opts.dominated]);
      if (signature === this.rendered) return;
      this.rendered = signature;
      this.render(reply.error);
    }

    render(error) {
      const chosen = new Set(this.r.runs.map((x) => pickKey(x.store, x.name)));
      const pick = document.getElementById("pick");
      const items = allRuns().map((r) => {
        const key = pickKey(r.store, r.name);
        const box = h("input", { type: "checkbox", "data-key": key, onchange: (e) => {
          if (e.target.checked) chosen.add(key); else chosen.delete(key);
          location.hash = `#/compare?runs=${[...chosen].join(",")}`;
        } });
        box.checked = chosen.has(key);
        return h("label", { class: "pick-run" }, box, ` ${r.name} `, h("span", { class: "muted" }, `(${r.label}, ${r.status}, ${r.evaluations} evaluations)`));
      });
      pick.replaceChildren(...(error ? [message(error, "error")] : []), ...items);
      const runs = this.runs();
      const errors = runs.filter((r) => r.error).map((r) => message(`${r.name}: ${r.error}`, "error"));
      if (errors.length) pick.append(...errors);
      const ready = runs.filter((r) => r.meta);
      useLabels(ready);
      const note = document.getElementById("cmp-note");
      if (!ready.length) {
        note.textContent = "tick two or more runs above to overlay them";
        document.getElementById("cmp-controls").replaceChildren();
        Plotly.purge(document.getElementById("cmp-pareto"));
        Plotly.purge(document.getElementById("cmp-convergence"));
        return;
      }
      const o = state.opts;
      const objs = objectives(ready);
      if (!objs.includes(o.x)) o.x = budgetsOf(ready).find((m) => objs.includes(m)) || objs[0];
      if (!objs.includes(o.y) || o.y === o.x) o.y = ["kl", "fitness"].find((m) => objs.includes(m) && m !== o.x) || objs.find((m) => m !== o.x);
      const sizes = [...new Set(ready.flatMap((r) => r.tokenSizes()))].sort((a, b) => a - b);
      if (o.tokens !== "all" && !sizes.includes(Number(o.tokens))) o.tokens = "all";
      const sel = (id, options, chosenValue, set) => {
        const s = h("select", { id, onchange: (e) => { set(e.target.value); this.poll(); } }, options.map(([v, t]) => h("option", { value: v }, t)));
        s.value = chosenValue;
        return s;
      };
      const dom = h("input", { type: "checkbox", id: "cmp-dominated", onchange: (e) => { o.dominated = e.target.checked; this.poll(); } });
      dom.checked = o.dominated;
      document.getElementById("cmp-controls").replaceChildren(
        h("label", {}, "x ", sel("cmp-x", objs.map((m) => [m, label(m)]), o.x, (v) => { o.x = v; })),
        h("label", {}, "y ", sel("cmp-y", objs.map((m) => [m, label(m)]), o.y, (v) => { o.y = v; })),
        h("label", {}, "calibration size ", sel("cmp-tokens", [["all", "all"], ...sizes.map((t) => [String(t), `${t} tokens`])], o.tokens, (v) => { o.tokens = v; })),
        h("label", {}, dom, " show dominated points"));
      const traces = [], conv = [], every = [];
      ready.forEach((run, i) => {
        const colour = PALETTE[i % PALETTE.length];
        const pts = run.points().filter((p) => (p.final || o.tokens === "all" || String(p.tokens) === o.tokens) &&
          value(p, o.x) != null && value(p, o.y) != null);
        const coords = pts.map((p) => [o.x, o.y].map((m) => (o.maximise.has(m) ? -1 : 1) * value(p, m)));
        const mask = nonDominated(coords);
        pts.forEach((p, j) => { if (mask[j]) every.push({ p, c: coords[j], run: run.name }); });
        const front = pts.filter((_, j) => mask[j]).sort((a, b) => (value(a, o.x) - value(b, o.x)) * (o.maximise.has(o.x) ? -1 : 1));
        const stores = new Set(ready.map((r) => r.store));
        const where = (state.stores || []).find((s) => s.id === run.store);
        const name = esc(stores.size > 1 && where ? `${run.name} (${where.label.split("/").pop()})` : run.name);
        traces.push({ type: "scatter", mode: "lines+markers", name, legendgroup: name, x: front.map((p) => value(p, o.x)),
          y: front.map((p) => value(p, o.y)), hovertext: front.map((p) => `${esc(run.name)}<br>${hoverText(p)}`), hoverinfo: "text",
          line: { color: colour, shape: "hv" }, marker: { color: colour, size: 9 }, meta: { kind: "front", run: run.name } });
        if (o.dominated) {
          const rest = pts.filter((_, j) => !mask[j]);
          traces.push({ type: rest.length > GL_POINTS ? "scattergl" : "scatter", mode: "markers", name: `${name} dominated`, legendgroup: name, showlegend: false,
            x: rest.map((p) => value(p, o.x)), y: rest.map((p) => value(p, o.y)), opacity: 0.2,
            hovertext: rest.map((p) => `${esc(run.name)}<br>${hoverText(p)}`), hoverinfo: "text",
            marker: { color: colour, size: 6 }, meta: { kind: "dominated", run: run.name } });
        }
        const search = run.list().filter((r) => r.phase === "search" && r.fitness != null && (o.tokens === "all" || String(r.tokens) === o.tokens));
        let best = Infinity;
        conv.push({ type: "scatter", mode: "lines", name, x: search.map((r) => r.n),
          y: search.map((r) => (best = Math.min(best, r.fitness))), line: { color: colour, shape: "hv", width: 2 },
          meta: { kind: "best", run: run.name } });
      });
      if (ready.length > 1) {
        // The joint front: what the runs found together (a sweep's answer over its budgets).
        const jmask = nonDominated(every.map((e) => e.c));
        const joint = every.filter((_, j) => jmask[j]).sort((a, b) => a.c[0] - b.c[0]);
        traces.push({ type: "scatter", mode: "lines", name: "joint front", x: joint.map((e) => value(e.p, o.x)),
          y: joint.map((e) => value(e.p, o.y)), hovertext: joint.map((e) => `${esc(e.run)}<br>${hoverText(e.p)}`), hoverinfo: "text",
          line: { color: "#111", dash: "dash", width: 1.5, shape: "hv" }, meta: { kind: "joint", points: joint.length } });
      }
      note.textContent = `${ready.length} run(s): lines join each run's non-dominated points (every objective minimised)` +
        (ready.length > 1 ? "; the dashed line is their joint front." : ".");
      const title = (m) => `${plotLabel(m)} ${o.maximise.has(m) ? "↑" : "↓"}`;
      Plotly.react(document.getElementById("cmp-pareto"), traces, {
        uirevision: `${o.x},${o.y},${o.tokens}`, height: 460, margin: { l: 70, r: 20, t: 10, b: 55 }, hovermode: "closest",
        xaxis: { title: { text: title(o.x) } }, yaxis: { title: { text: title(o.y) }, exponentformat: "power" },
        legend: { orientation: "h", y: -0.18 }, font: { size: 12 } }, { responsive: true, displaylogo: false });
      Plotly.react(document.getElementById("cmp-convergence"), conv, {
        uirevision: "cmp", height: 340, margin: { l: 70, r: 20, t: 10, b: 45 },
        xaxis: { title: { text: "evaluation" } }, yaxis: { title: { text: "best fitness so far" }, exponentformat: "power" },
        legend: { orientation: "h", y: -0.22 }, font: { size: 12 } }, { responsive: true, displaylogo: false });
    }
  }

  // ------------------------------------------------------------------ start

  window.presso = { state, nonDominated, route };
  window.addEventListener("hashchange", show);
  window.addEventListener("load", async () => {
    if (typeof Plotly === "undefined") {
      document.getElementById("view").replaceChildren(message("Plotly.js did not load; reinstall presso's dashboard extra", "error"));
      return;
    }
    if (DATA && !location.hash) location.replace(runHash(DATA.run.store, DATA.run.run));
    setLive(true, "connecting…");
    await show();
    if (!DATA) setTimeout(poll, backlog ? 0 : POLL_MS);
  });
})();
