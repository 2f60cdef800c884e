// The Model, Mistakes and Runs views.
import {api, runLabel, state} from "./api.js";
import {PALETTE, digitCanvas, divergingCanvas, el, lineChart, num, pct} from "./charts.js";

const runUrl = (id) => `/api/runs/${encodeURIComponent(id)}`;
const link = (view, id, text) => el("a", {href: `#/${view}/${encodeURIComponent(id)}`}, text);
export const statusPill = (status) => el("span", {class: `pill ${status}`}, status);
const loading = (text) => el("div", {class: "card"}, el("p", {class: "muted"}, text));

function noRun(main) {
  main.replaceChildren(el("div", {class: "card"}, el("p", {class: "notice"}, "No run is served with a model yet.")));
}

// --- Model ---------------------------------------------------------------------------------------

export async function showModel(main, runId, stillCurrent) {
  if (!runId) return noRun(main);
  main.replaceChildren(loading("Loading the model…"));
  const d = await api(runUrl(runId));
  if (!stillCurrent()) return;
  const s = d.summary || {};
  const total = d.architecture ? d.architecture.reduce((n, layer) => n + layer.parameters, 0) : null;
  const settings = d.config || d.model_config || {};
  const head = el("div", {class: "page-head"}, el("h1", {}, d.name), statusPill(d.status),
    el("p", {class: "sub"}, d.kind === "model" ? "a model file" : d.collection ? `in ${d.collection}` : "a run folder"));
  const stats = el("div", {class: "stats"},
    stat(pct(s.test_acc), "test accuracy"), stat(pct(s.train_acc), "train accuracy"),
    stat(s.epochs ?? "—", "epochs"), stat(s.seconds_per_epoch ? `${s.seconds_per_epoch.toFixed(1)} s` : "—",
      "per epoch"), stat(total !== null ? total.toLocaleString("en") : "—", "parameters"),
    stat(settings.dataset || "—", "dataset"));
  const left = el("div", {class: "stack"}, architectureCard(d, total), curvesCard(d), healthCard(d));
  const right = el("div", {class: "stack"}, filtersCard(d), summaryCard(d), settingsCard(settings));
  main.replaceChildren(head, el("div", {class: "card"}, stats), el("div", {class: "grid model-grid"}, left, right));
}

function stat(value, label) {
  return el("div", {class: "stat"}, el("b", {}, value), el("span", {}, label));
}

function architectureCard(d, total) {
  const card = el("section", {class: "card"}, el("h2", {}, "Architecture"));
  if (!d.architecture) return card.append(el("p", {class: "muted"}, "No model file: the run did not complete.")), card;
  card.append(el("p", {class: "sub"}, "Each layer as written, its output for one 1 × 28 × 28 image, its parameters."));
  const rows = d.architecture.map((layer) => el("tr", {},
    el("td", {class: "num"}, layer.index), el("td", {}, el("b", {}, layer.type),
      el("div", {class: "mono muted arch-desc"}, layer.description)),
    el("td", {class: "mono shape"}, layer.output_shape.join(" × ")),
    el("td", {class: "num"}, layer.parameters ? layer.parameters.toLocaleString("en") : "")));
  rows.push(el("tr", {class: "total"}, el("td"), el("td", {}, "total"), el("td"),
    el("td", {class: "num"}, total.toLocaleString("en"))));
  card.append(el("div", {class: "table-wrap"}, el("table", {},
    el("thead", {}, el("tr", {}, el("th", {class: "num"}, "#"), el("th", {}, "layer"), el("th", {}, "output"),
      el("th", {class: "num"}, "params"))), el("tbody", {}, rows))));
  return card;
}

function filtersCard(d) {
  const card = el("section", {class: "card"}, el("h2", {}, "First-layer filters"));
  if (!d.filters) {
    card.append(el("p", {class: "muted"}, d.architecture ? "This model has no convolution." : "No model file."));
    return card;
  }
  const w = d.filters.weights; // (O, I, KH, KW)
  const scale = Math.max(...w.flat(3).map(Math.abs));
  card.append(el("p", {class: "sub"}, `Layer ${d.filters.layer}: ${w.length} filters of ${w[0][0].length} × `
    + `${w[0][0][0].length} weights, each slid over the image to make one feature map.`));
  const grid = el("div", {class: "filters"});
  w.forEach((filter, o) => filter.forEach((kernel, i) => {
    const canvas = divergingCanvas(kernel.flat(), kernel.length, kernel[0].length, scale);
    canvas.classList.add("filter");
    grid.append(el("figure", {}, canvas, el("figcaption", {}, filter.length > 1 ? `${o}.${i}` : `filter ${o}`)));
  }));
  card.append(grid, el("div", {class: "legend-scale"}, `−${scale.toFixed(2)}`, el("i"), `+${scale.toFixed(2)}`));
  return card;
}

function curvesCard(d) {
  const card = el("section", {class: "card"}, el("h2", {}, "Training curves"));
  const h = d.history || [];
  if (!h.length) {
    card.append(el("p", {class: "muted"}, d.kind === "model" ? "A model file alone has no training history."
      : "No epoch has completed yet."));
    return card;
  }
  const series = (key, name, color, dash, scale = 1) => ({name, color, dash,
    points: h.filter((e) => e[key] !== null && e[key] !== undefined).map((e) => [e.epoch, scale * e[key]])});
  const withVal = h.some((e) => e.val_loss !== null && e.val_loss !== undefined);
  const loss = [series("train_loss", "train", PALETTE[0]), series("test_loss", "test", PALETTE[3], "5 3")];
  const acc = [series("train_acc", "train", PALETTE[0], null, 100), series("test_acc", "test", PALETTE[3], "5 3", 100)];
  if (withVal) {
    loss.push(series("val_loss", "validation", PALETTE[2], "2 2"));
    acc.push(series("val_acc", "validation", PALETTE[2], "2 2", 100));
  }
  card.append(el("p", {class: "sub"}, "Train figures are averaged over each epoch as it trained; test figures are "
    + "measured after it."), el("div", {class: "charts"},
    el("div", {class: "chart"}, el("h3", {}, "Loss"), lineChart(loss, {yLabel: "loss", logY: true})),
    el("div", {class: "chart"}, el("h3", {}, "Accuracy (%)"), lineChart(acc, {yLabel: "accuracy"}))));
  return card;
}

export function healthCard(d) {
  const card = el("section", {class: "card"}, el("h2", {}, "Training health"));
  const rows = d.health || [];
  if (!rows.length) {
    card.append(el("p", {class: "muted"}, "No health.csv for this run."));
    return card;
  }
  card.append(el("p", {class: "sub"}, "From health.csv, per layer and epoch: gradient norm and update/weight ratio "
    + "(healthy: about 1e-3) of the layers with parameters, dead ReLU units on a fixed probe batch."));
  const byLayer = (key, scale = 1) => {
    const layers = new Map();
    for (const r of rows) {
      if (r[key] === null || r[key] === undefined) continue;
      const name = `${r.layer} ${r.type}`;
      if (!layers.has(name)) layers.set(name, []);
      layers.get(name).push([r.epoch, scale * r[key]]);
    }
    return [...layers].map(([name, points], i) => ({name, points, color: PALETTE[i % PALETTE.length]}));
  };
  const charts = el("div", {class: "charts"});
  const add = (title, key, options, scale) => {
    const series = byLayer(key, scale);
    if (series.length) charts.append(el("div", {class: "chart"}, el("h3", {}, title), lineChart(series, options)));
  };
  add("Gradient norm", "grad_norm", {logY: true});
  add("Update / weight", "update_ratio", {logY: true});
  add("Dead ReLU units (%)", "dead_fraction", {}, 100);
  add("Saturated units (%)", "saturated_fraction", {}, 100);
  card.append(charts);
  return card;
}

function summaryCard(d) {
  const card = el("section", {class: "card"}, el("h2", {}, "Summary"));
  const s = d.summary;
  if (!s) {
    card.append(el("p", {class: "muted"}, d.kind === "model" ? "A model file: no run summary."
      : `No summary yet (${d.status}).`));
    return card;
  }
  const rows = [["status", s.status], ["epochs", s.epochs], ["train loss", num(s.train_loss)],
    ["train accuracy", pct(s.train_acc)], ["test loss", num(s.test_loss)], ["test accuracy", pct(s.test_acc)],
    ["training time", s.total_seconds ? `${s.total_seconds.toFixed(1)} s` : "—"]];
  if (s.val_acc !== undefined) rows.push(["validation accuracy", pct(s.val_acc)]);
  if (s.message) rows.push(["message", s.message]);
  card.append(kvTable(rows));
  if (s.advice && s.advice.length) {
    card.append(el("h3", {}, "Advice"), el("ul", {class: "advice"}, s.advice.map((a) => el("li", {}, a))));
  }
  return card;
}

function settingsCard(settings) {
  const skip = new Set(["classes", "dataset_sha256", "format"]);
  const rows = Object.entries(settings).filter(([k]) => !skip.has(k))
    .map(([k, v]) => [k, v === null ? "—" : typeof v === "number" ? String(+v.toPrecision(6)) : String(v)]);
  return el("section", {class: "card"}, el("h2", {}, "Settings"), kvTable(rows));
}

function kvTable(rows) {
  return el("table", {class: "kv"}, el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("td", {}, k),
    el("td", {class: "mono"}, v)))));
}

// --- Mistakes ------------------------------------------------------------------------------------

export async function showMistakes(main, runId, stillCurrent) {
  if (!runId) return noRun(main);
  const run = state.byId.get(runId);
  if (run && !run.has_model) {
    main.replaceChildren(el("div", {class: "card"}, el("p", {class: "notice"},
      `${run.name} has no model file (it did not complete): choose another model above.`)));
    return;
  }
  main.replaceChildren(loading("Running the model over the test set… (the first time takes a second or two)"));
  const c = await api(`${runUrl(runId)}/confusion`);
  if (!stillCurrent()) return;
  const k = c.classes.length;
  const wrong = c.count - c.matrix.reduce((n, row, i) => n + row[i], 0);
  const panel = el("section", {class: "card cell-panel"});
  const buttons = [];
  let maxOff = 0, best = [0, 0];
  c.matrix.forEach((row, t) => row.forEach((v, p) => {
    if (t !== p && v > maxOff) { maxOff = v; best = [t, p]; }
  }));
  const select = (t, p) => {
    for (const b of buttons) b.classList.toggle("selected", b.dataset.t == t && b.dataset.p == p);
    showCell(panel, runId, c, t, p, stillCurrent);
  };
  const click = (t, p) => {
    select(t, p);
    if (panel.getBoundingClientRect().top > window.innerHeight * 0.6) panel.scrollIntoView({behavior: "smooth"});
  };
  const head = el("tr", {}, el("th"), c.classes.map((name) => el("th", {title: name}, short(name))));
  const body = c.matrix.map((row, t) => {
    const rowTotal = row.reduce((a, b) => a + b, 0) || 1;
    return el("tr", {}, el("th", {title: name(c, t)}, short(c.classes[t])), row.map((v, p) => {
      const b = el("button", {type: "button", class: v ? "" : "zero", "data-t": t, "data-p": p,
        title: `true ${c.classes[t]}, predicted ${c.classes[p]}: ${v}`, onclick: () => v && click(t, p)}, v);
      b.style.background = cellColour(t === p, t === p ? v / rowTotal : Math.log1p(v) / Math.log1p(maxOff || 1), v);
      if (v && (t === p ? v / rowTotal > 0.6 : Math.log1p(v) / Math.log1p(maxOff || 1) > 0.6)) b.style.color = "#fff";
      buttons.push(b);
      return el("td", {}, b);
    }));
  });
  const matrix = el("section", {class: "card"}, el("h2", {}, "Confusion matrix"),
    el("p", {class: "sub"}, "Rows: the true class. Columns: the model's answer. Click a cell to see its images."),
    el("div", {class: "table-wrap"}, el("table", {class: "confusion"}, el("thead", {}, head), el("tbody", {}, body))));
  main.replaceChildren(
    el("div", {class: "page-head"}, el("h1", {}, "Mistakes"), el("p", {class: "sub"}, `${run ? runLabel(run) : runId}`
      + ` on the ${c.dataset} test set`)),
    el("div", {class: "card"}, el("div", {class: "stats"}, stat(pct(c.accuracy), "test accuracy"),
      stat(wrong.toLocaleString("en"), "mistakes"), stat(c.count.toLocaleString("en"), "test images"),
      stat(maxOff ? `${c.classes[best[0]]} → ${c.classes[best[1]]}` : "—", "most common mistake"))),
    el("div", {class: "grid mistakes-grid"}, matrix, panel));
  if (k) select(...(maxOff ? best : [0, 0]));
}

const short = (text) => (text.length > 4 ? text.slice(0, 3) + "…" : text);
const name = (c, t) => c.classes[t];

function cellColour(diagonal, t, v) {
  if (!v) return "";
  const a = 0.12 + 0.88 * Math.min(1, t);
  return diagonal ? `rgba(22, 163, 74, ${a.toFixed(3)})` : `rgba(234, 88, 12, ${a.toFixed(3)})`;
}

async function showCell(panel, runId, c, t, p, stillCurrent) {
  const right = t === p;
  panel.replaceChildren(el("h2", {}, `True ${c.classes[t]}, predicted ${c.classes[p]}`),
    el("p", {class: "muted"}, "Loading…"));
  const cell = await api(`${runUrl(runId)}/confusion/${t}/${p}?limit=60`);
  if (!stillCurrent()) return;
  const shown = cell.images.length;
  panel.replaceChildren(el("h2", {}, `True ${c.classes[t]}, predicted ${c.classes[p]}`),
    el("p", {class: "sub"}, `${cell.count} test image${cell.count === 1 ? "" : "s"}`
      + (shown < cell.count ? `, the first ${shown} shown` : "")
      + (right ? ": right answers, the closest calls first." : ": mistakes, the most confidently wrong first.")),
    el("div", {class: "thumbs"}, cell.images.map((image) => thumb(image, c, t, p, right))));
}

function thumb(image, c, t, p, right) {
  const probs = image.probabilities;
  const bars = el("div", {class: "minibars", title: "the ten probabilities"}, probs.map((q, k) => {
    const bar = el("i", {class: k === t ? "true" : k === p ? "pred" : ""});
    bar.style.height = `${Math.max(2, 100 * q)}%`;
    return bar;
  }));
  return el("div", {class: `thumb${right ? " right" : ""}`}, digitCanvas(image.image),
    el("div", {class: "p"}, el("b", {}, `said ${c.classes[p]}: ${(100 * probs[p]).toFixed(1)} %`)),
    right ? null : el("div", {class: "p muted"}, `${c.classes[t]}: ${(100 * probs[t]).toFixed(1)} %`),
    bars, el("div", {class: "idx"}, `test image #${image.index}`));
}

// --- Runs ----------------------------------------------------------------------------------------

const COLUMNS = [
  ["status", "status"], ["epochs", "epochs done", "num"], ["train_acc", "train acc", "num"],
  ["test_acc", "test acc", "num"], ["test_loss", "test loss", "num"], ["seconds_per_epoch", "s / epoch", "num"],
];

// While a run trains (a sweep or study started from the command line, a run started in Train), the table is read
// again every few seconds, so runs appear and fill in as they train.
const REFRESH_RUNNING_MS = 2000, REFRESH_IDLE_MS = 4000;
const sorting = new Map();  // collection name -> {sortKey, ascending, status}: kept across refreshes

export async function showRuns(main, view, collectionId, stillCurrent, again = false) {
  if (!again) main.replaceChildren(loading("Loading the runs…"));
  const collections = collectionId ? [collectionId] : state.collections.map((c) => c.id);
  const loaded = await Promise.all(collections.map((id) => api(`/api/collections/${encodeURIComponent(id)}`)));
  if (!stillCurrent()) return;
  const loose = again ? (await api("/api/runs")).runs.filter((r) => !r.collection)  // their status may have changed
    : state.runs.filter((r) => !r.collection);
  const parts = [el("div", {class: "page-head"}, el("h1", {}, collectionId ? loaded[0].name : "Runs"),
    el("p", {class: "sub"}, collectionId ? `a ${loaded[0].kind} folder` : "everything this server was given"))];
  for (const c of loaded) parts.push(await collectionCard(c, view === "report" && collectionId, stillCurrent));
  if (!collectionId && loose.length) {
    parts.push(runsTable({name: "Run folders and model files", runs: loose, varying: ["model", "dataset"],
      kind: "folder"}));
  }
  if (!stillCurrent()) return;
  const scroll = window.scrollY;
  main.replaceChildren(...parts);
  if (again) window.scrollTo(0, scroll);
  if (view !== "runs") return;
  const running = [...loaded.flatMap((c) => c.runs), ...loose].some((r) => r.status === "running");
  setTimeout(() => {
    if (stillCurrent()) showRuns(main, view, collectionId, stillCurrent, true).catch(() => {});
  }, running ? REFRESH_RUNNING_MS : REFRESH_IDLE_MS);
}

async function collectionCard(c, reportTab, stillCurrent) {
  if (!c.report) return runsTable(c);
  const tabs = el("nav", {class: "subtabs"},
    el("a", {href: `#/runs/${encodeURIComponent(c.id)}`, class: reportTab ? "" : "active"}, `Runs (${c.runs.length})`),
    el("a", {href: `#/report/${encodeURIComponent(c.id)}`, class: reportTab ? "active" : ""}, "Report"));
  if (!reportTab) {
    const card = runsTable(c);
    card.insertBefore(tabs, card.children[2] || null);
    return card;
  }
  const report = await api(`/api/collections/${encodeURIComponent(c.id)}/report`);
  const body = el("article", {class: "report"});
  // The server rendered REPORT.md with raw HTML disabled (markdown-it, safe preset) and only its own figure URLs.
  body.innerHTML = report.html;
  return el("section", {class: "card"}, el("h2", {}, c.name), el("p", {class: "sub"}, "a study"), tabs, body);
}

function runsTable(c) {
  // The settings that vary between the runs, then the figures. Settings are looked up in r.settings, so a
  // varying "epochs" setting and the epochs done (r.epochs) are two columns.
  // Columns that would say the same on every row are left out: the status when all runs share it, the epochs
  // done when every run did the epochs it was set to do.
  const statuses = [...new Set(c.runs.map((r) => r.status))];
  const allDone = c.runs.every((r) => !r.settings || r.epochs === r.settings.epochs);
  const figures = COLUMNS.filter(([key]) => !(key === "status" && statuses.length < 2) && !(key === "epochs" && allDone));
  const columns = [["name", "run"], ...c.varying.map((v) => [`settings.${v}`, v.replaceAll("_", " ")]), ...figures];
  const saved = sorting.get(c.name) || {sortKey: "test_acc", ascending: false, status: ""};
  sorting.set(c.name, saved);
  let {sortKey, ascending, status} = saved;
  const tbody = el("tbody");
  const headers = columns.map(([key, label, cls]) => el("th", {class: `sortable ${cls || ""}`,
    onclick: () => { ascending = sortKey === key ? !ascending : key === "name"; sortKey = key; draw(); }}, label));
  const value = (r, key) => (key.startsWith("settings.") ? (r.settings || {})[key.slice(9)] ?? r[key.slice(9)]
    : r[key]);
  const draw = () => {
    Object.assign(saved, {sortKey, ascending, status});
    headers.forEach((h, i) => {
      h.classList.toggle("sorted", columns[i][0] === sortKey);
      h.classList.toggle("asc", ascending);
    });
    const rows = c.runs.filter((r) => !status || r.status === status).sort((a, b) => {
      const x = value(a, sortKey), y = value(b, sortKey);
      if (x === y) return 0;
      if (x === undefined || x === null) return 1;
      if (y === undefined || y === null) return -1;
      return (x < y ? -1 : 1) * (ascending ? 1 : -1);
    });
    tbody.replaceChildren(...rows.map((r) => el("tr", {"data-run": r.id}, columns.map(([key, , cls]) => {
      if (key === "name") return el("td", {class: "name"}, link("model", r.id, r.name));
      if (key === "status") return el("td", {title: r.error || null}, statusPill(r.status));
      const v = value(r, key);
      if (key.endsWith("_acc")) {
        const bar = el("span", {class: "acc-bar"});
        bar.style.width = `${Math.round(30 * (v ?? 0))}px`;
        return el("td", {class: "num"}, v === undefined || v === null ? "—" : (100 * v).toFixed(2), key === "test_acc" ? bar : "");
      }
      if (key === "test_loss") return el("td", {class: "num"}, num(v));
      if (key === "seconds_per_epoch") return el("td", {class: "num"}, v ? v.toFixed(1) : "—");
      return el("td", {class: cls || ""}, v === undefined || v === null ? "—" : String(v));
    }), el("td", {class: "links"}, r.status === "running" ? link("train", r.id, "watch")
      : r.has_model ? [link("draw", r.id, "draw"), link("mistakes", r.id, "mistakes")]
      : el("span", {class: "muted", title: r.error || null}, r.error ? "cannot be read" : "no model")))));
    if (!rows.length) tbody.append(el("tr", {}, el("td", {colspan: columns.length + 1, class: "muted"}, "no runs")));
  };
  const filter = el("select", {"aria-label": "Filter by status", onchange: (e) => { status = e.target.value; draw(); }},
    el("option", {value: ""}, `all (${c.runs.length})`),
    statuses.map((s) => el("option", {value: s, selected: s === status},
      `${s} (${c.runs.filter((r) => r.status === s).length})`)));
  draw();
  return el("section", {class: "card runs-card"}, el("h2", {}, c.name),
    el("p", {class: "sub"}, `${c.kind === "folder" ? "runs" : `a ${c.kind}`}`
      + (statuses.length === 1 ? `, all ${c.runs.length} ${statuses[0]}` : "")
      + (c.varying.length ? `; settings that vary: ${c.varying.map((v) => v.replaceAll("_", " ")).join(", ")}` : "")),
    el("div", {class: "toolbar"}, el("label", {}, "status", filter),
      el("span", {class: "muted"}, "click a column to sort; a run's name opens its model")),
    el("div", {class: "table-wrap"}, el("table", {class: "runs-table"}, el("thead", {}, el("tr", {}, headers,
      el("th", {}, ""))), tbody)));
}
