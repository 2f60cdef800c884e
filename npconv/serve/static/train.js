// The Train view: a form for a run's settings (built from GET /api/train, the settings schema), and the run
// as it trains, from its event stream (GET /api/runs/RUN/events): the step losses, each epoch's figures, the first
// convolution's filters and feature maps, the health advice, a progress line. Stop, resume, compare.
import {api, go} from "./api.js";
import {PALETTE, divergingCanvas, el, greyCanvas, lineChart, num, pct} from "./charts.js";
import {healthCard} from "./views.js";

const runUrl = (id) => `/api/runs/${encodeURIComponent(id)}`;
// What #train-status says for each run status: a stopped run's summary says "interrupted".
const SHOWN = {running: "running", completed: "completed", interrupted: "stopped", diverged: "diverged",
  pending: "not started", failed: "failed"};
const TOKEN_KEY = "npconv-token";
// Drawn at most: longer step-loss curves are averaged in buckets (a line of a few hundred pixels shows no more).
const MAX_POINTS = 1200;

let form = null;  // GET /api/train, fetched once per page

/** POST JSON to a writing endpoint, with the token when the server wants one. */
function post(path, body) {
  const headers = {"Content-Type": "application/json"};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["X-Npconv-Token"] = token;
  return api(path, {method: "POST", headers, body: JSON.stringify(body)});
}

export async function showTrain(main, runId, stillCurrent) {
  form = await api("/api/train");
  if (!stillCurrent()) return;
  const followed = runId || form.training;
  const live = newLive(followed, stillCurrent);
  const left = el("div", {class: "stack"}, formCard(live));
  const right = el("div", {class: "stack"}, live.statusCard, live.curveCard, live.filtersCard, live.healthCard,
    compareCard(live));
  main.replaceChildren(
    el("div", {class: "page-head"}, el("h1", {}, "Train"), el("p", {class: "sub"}, form.folder
      ? `Start a run and watch it learn. Runs go into ${form.folder}/, as npconv train writes them.`
      : "Follow a run as it trains. (To start runs here, serve a folder of runs: npconv serve runs/)")),
    el("div", {class: `grid train-grid${followed ? " following" : ""}`}, left, right));
  if (followed) follow(live);
}

// --- the form -----------------------------------------------------------------------------------------

function formCard(live) {
  const fields = form.settings.map(field);
  const token = form.token_required ? el("label", {class: "field"}, el("span", {}, "token"),
    el("input", {type: "password", name: "token", autocomplete: "off", value: sessionStorage.getItem(TOKEN_KEY) || "",
      oninput: (e) => sessionStorage.setItem(TOKEN_KEY, e.target.value)}),
    el("small", {}, "printed by npconv serve when it started")) : null;
  const error = el("p", {id: "train-error", class: "error", role: "alert"});
  const start = el("button", {type: "submit", id: "train-start", class: "primary", disabled: !form.folder || null},
    "Start training");
  const stop = el("button", {type: "button", id: "train-stop", disabled: true, onclick: () => stopRun(live, error)},
    "Stop");
  const resume = el("button", {type: "button", id: "train-resume", disabled: true,
    onclick: () => resumeRun(live, error)}, "Resume");
  const formEl = el("form", {id: "train-form", novalidate: true, onsubmit: (event) => {
    event.preventDefault();
    startRun(formEl, live, error);
  }}, el("div", {class: "fields"}, fields), token, el("div", {class: "row buttons"}, start, stop, resume), error);
  formEl.querySelector("[name=model]").addEventListener("change", (event) => modelDefaults(formEl, event.target.value));
  live.buttons = {start, stop, resume};
  return el("section", {class: "card"}, el("h2", {}, "Settings"),
    el("p", {class: "sub"}, `Checked as npconv train checks them. Caps here: ${form.caps.epochs} epochs, `
      + `${form.caps.train_images.toLocaleString("en")} training images.`), formEl);
}

function field(s) {
  const label = s.name.replaceAll("_", " ");
  let input;
  if (s.name === "model") {
    input = el("select", {name: "model"},
      form.models.map((m) => el("option", {value: m, selected: m === s.default}, m)));
  } else if (s.choices) {
    input = el("select", {name: s.name}, s.choices.map((c) => el("option", {value: c, selected: c === s.default}, c)));
  } else if (s.kind === "bool") {
    input = el("input", {type: "checkbox", name: s.name, checked: s.default});
  } else {
    const cap = s.name === "epochs" ? form.caps.epochs : s.name === "train_subset" ? form.caps.train_images : null;
    const high = s.high ?? cap;
    input = el("input", {type: "number", name: s.name, inputmode: s.kind === "int" ? "numeric" : "decimal",
      step: s.kind === "int" ? 1 : "any", min: s.low ?? null, max: high ?? null,
      value: s.default === null ? "" : s.default, placeholder: s.optional ? "all" : null});
  }
  return el("label", {class: "field", title: `${s.help}: ${s.accepted}`}, el("span", {}, label), input,
    el("small", {}, s.help));
}

/** The settings as the form holds them: numbers as numbers, an empty optional number as null. */
function settingsOf(formEl) {
  const out = {};
  for (const s of form.settings) {
    const input = formEl.elements[s.name];
    if (s.kind === "bool") out[s.name] = input.checked;
    else if (s.kind === "int" || s.kind === "float") {
      const text = input.value.trim();
      if (text === "") { if (s.optional) out[s.name] = null; continue; }
      out[s.name] = Number.isFinite(Number(text)) ? Number(text) : text;  // the server says what is wrong
    } else out[s.name] = input.value;
  }
  return out;
}

/** A preset's own defaults (cnn-bn trains 15 epochs with shifts), or the schema's, in the fields they touch. */
function modelDefaults(formEl, model) {
  const own = form.model_defaults[model] || {};
  const touched = new Set(Object.values(form.model_defaults).flatMap(Object.keys));
  for (const s of form.settings) {
    if (touched.has(s.name) && formEl.elements[s.name]) formEl.elements[s.name].value = own[s.name] ?? s.default;
  }
}

async function startRun(formEl, live, error) {
  error.textContent = "";
  live.buttons.start.disabled = true;
  try {
    const answer = await post("/api/train", settingsOf(formEl));
    go("train", answer.run);
  } catch (e) {
    error.textContent = e.message;
    live.buttons.start.disabled = false;
  }
}

async function stopRun(live, error) {
  error.textContent = "";
  live.buttons.stop.disabled = true;
  try {
    await post(`${runUrl(live.run)}/stop`, {});
  } catch (e) {
    error.textContent = e.message;
  }
}

async function resumeRun(live, error) {
  error.textContent = "";
  live.buttons.resume.disabled = true;
  try {
    await post(`${runUrl(live.run)}/resume`, {});
    follow(live);  // the stream again, from the start: the repeated epoch's steps are gone from losses.csv
  } catch (e) {
    error.textContent = e.message;
    live.buttons.resume.disabled = false;
  }
}

// --- following a run ----------------------------------------------------------------------------------

function newLive(run, stillCurrent) {
  const live = {run, stillCurrent, source: null, points: [], history: [], health: [], advice: [], snapshot: null,
    progress: null, end: null, config: null, buttons: null, compare: new Map(), drawPending: false};
  live.status = el("span", {id: "train-status", class: "pill"}, run ? "connecting" : "no run yet");
  live.progressLine = el("p", {id: "train-progress", class: "progress-line mono"});
  live.message = el("p", {class: "train-message"});
  live.statusCard = el("section", {class: "card"}, el("div", {class: "row"}, el("h2", {}, run ? run : "No run yet"),
    live.status, run ? el("a", {href: `#/model/${encodeURIComponent(run)}`, class: "more"}, "open in Model") : null),
  live.progressLine, live.message);
  live.curve = el("div", {id: "train-curve", class: "charts", "data-points": 0, "data-epochs": 0});
  live.curveCard = el("section", {class: "card"}, el("h2", {}, "Loss and accuracy"),
    el("p", {class: "sub"}, "The training loss of every step as it trains (log scale), then each epoch's train and "
      + "test figures."), live.curve);
  live.filters = el("div", {id: "train-filters", "data-step": ""});
  live.filtersCard = el("section", {class: "card"}, el("h2", {}, "First-layer filters and what they see"),
    el("p", {class: "sub"}, "The first convolution's filters (blue negative, red positive) and their feature maps of "
      + "one fixed test image, a few times per epoch."), live.filters);
  live.healthCard = el("section", {class: "card"}, el("h2", {}, "Training health"),
    el("p", {class: "muted"}, "After the first epoch."));
  if (!run) {
    live.filters.append(el("p", {class: "muted"}, "Start a run to see its filters learn."));
    live.curve.append(el("p", {class: "muted"}, "Start a run to see its loss fall."));
  }
  return live;
}

async function follow(live) {
  if (live.source) live.source.close();
  Object.assign(live, {points: [], history: [], health: [], advice: [], snapshot: null, progress: null, end: null});
  try {
    live.config = (await api(runUrl(live.run))).config || {};
    fillForm(live.config);
  } catch (e) {
    live.message.replaceChildren(el("span", {class: "error"}, e.message));
    return;
  }
  const source = new EventSource(`${runUrl(live.run)}/events`);
  live.source = source;
  const on = (name, handle) => source.addEventListener(name, (event) => {
    if (!live.stillCurrent() || live.source !== source) { source.close(); return; }
    handle(JSON.parse(event.data));
    schedule(live);
  });
  on("reset", () => { live.points = []; });
  on("losses", (d) => { live.points.push(...d.points); });
  on("epochs", (d) => { live.history = d.history; live.health = d.health; live.advice = d.advice; });
  on("snapshot", (d) => { live.snapshot = d; live.snapshotChanged = true; });
  on("progress", (d) => { live.progress = d; });
  on("problem", (d) => { live.message.replaceChildren(el("span", {class: "muted"}, d.error)); });
  on("end", (d) => { live.end = d; source.close(); });
}

/** The form shows the followed run's settings: changing one and starting again is the learner's experiment. */
function fillForm(config) {
  const formEl = document.getElementById("train-form");
  if (!formEl) return;
  for (const s of form.settings) {
    const input = formEl.elements[s.name];
    if (!input || !(s.name in config)) continue;
    const value = config[s.name];
    if (s.kind === "bool") input.checked = Boolean(value);
    else if (input.tagName === "SELECT") {
      const name = String(value).split("/").pop();
      if ([...input.options].some((o) => o.value === name)) input.value = name;
    } else input.value = value === null ? "" : value;
  }
}

/** Redraw at most once per animation frame, however many events came. */
function schedule(live) {
  if (live.drawPending) return;
  live.drawPending = true;
  requestAnimationFrame(() => {
    live.drawPending = false;
    if (live.stillCurrent()) draw(live);
  });
}

function draw(live) {
  const status = live.end ? live.end.status : live.progress ? live.progress.status : "running";
  live.status.textContent = SHOWN[status] || status;
  live.status.className = `pill ${status}`;
  const running = status === "running";
  if (live.buttons) {
    live.buttons.stop.disabled = !running;
    live.buttons.resume.disabled = running || status !== "interrupted";
    live.buttons.start.disabled = !form.folder || (running && live.run === form.training);
  }
  live.progressLine.textContent = progressText(live.progress, running);
  const summary = live.end && live.end.summary;
  live.message.replaceChildren(summary && summary.message ? el("span", {class: "error"}, summary.message)
    : status === "interrupted" ? el("span", {class: "muted"}, summary && summary.epochs
      ? `Stopped; the checkpoint of epoch ${summary.epochs} is kept: Resume continues from it.`
      : "Stopped before its first epoch ended: no checkpoint to resume from; start it again.") : "");
  drawCurves(live);
  if (live.snapshotChanged) drawSnapshot(live);
  if (live.history.length) live.healthCard.replaceWith(live.healthCard = adviceAndHealth(live));
  drawCompare(live);
}

function progressText(p, running) {
  if (!p) return "";
  const parts = [`epoch ${Math.max(p.epoch, 1)}/${p.epochs}`];
  if (p.steps) parts.push(`step ${p.step.toLocaleString("en")}/${p.steps.toLocaleString("en")}`);
  if (p.steps_per_second) parts.push(`${p.steps_per_second.toFixed(1)} steps/s`);
  if (running && p.seconds_left !== null) parts.push(`${duration(p.seconds_left)} left`);
  return parts.join(" · ");
}

function duration(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** At most MAX_POINTS points: buckets of consecutive steps averaged (non-finite losses kept as they are). */
function thin(points) {
  if (points.length <= MAX_POINTS) return points;
  const size = Math.ceil(points.length / MAX_POINTS), out = [];
  for (let i = 0; i < points.length; i += size) {
    const bucket = points.slice(i, i + size).filter(([, y]) => Number.isFinite(y));
    if (bucket.length) out.push([bucket[bucket.length - 1][0], bucket.reduce((a, [, y]) => a + y, 0) / bucket.length]);
  }
  return out;
}

/** The mean of the last `window` steps' losses at each step (a twentieth of the steps so far, 5 at least). */
function smooth(points) {
  const finite = points.filter(([, y]) => Number.isFinite(y));
  const window = Math.max(5, Math.round(finite.length / 20));
  const out = [];
  let sum = 0;
  finite.forEach(([x, y], i) => {
    sum += y;
    if (i >= window) sum -= finite[i - window][1];
    if (i >= window - 1) out.push([x, sum / window]);
  });
  return thin(out);
}

function drawCurves(live) {
  live.curve.dataset.points = live.points.length;
  live.curve.dataset.epochs = live.history.length;
  if (!live.points.length && !live.history.length) {
    live.curve.replaceChildren(el("p", {class: "muted"}, "Waiting for the first steps…"));
    return;
  }
  const perEpoch = live.progress && live.progress.steps_per_epoch;
  const markers = [];
  if (live.end && live.end.diverged_step !== null && live.end.diverged_step !== undefined) {
    markers.push({x: live.end.diverged_step, label: "diverged", color: "#dc2626"});
  }
  const stepSeries = [{name: "train loss, each step", color: "#c5cae9", points: thin(live.points)},
    {name: "its moving average", color: PALETTE[0], points: smooth(live.points)}];
  if (perEpoch && live.history.length) {
    stepSeries.push({name: "test loss, each epoch", color: PALETTE[3], dash: "5 3",
      points: live.history.map((e) => [e.epoch * perEpoch, e.test_loss])});
  }
  const h = live.history;
  const acc = [{name: "train", color: PALETTE[0], points: h.map((e) => [e.epoch, 100 * e.train_acc])},
    {name: "test", color: PALETTE[3], dash: "5 3", points: h.map((e) => [e.epoch, 100 * e.test_acc])}];
  live.curve.replaceChildren(
    el("div", {class: "chart wide"}, el("h3", {}, "Loss"),
      lineChart(stepSeries, {logY: true, xLabel: "step", yLabel: "loss", markers})),
    el("div", {class: "chart"}, el("h3", {}, "Accuracy (%), each epoch"),
      h.length ? lineChart(acc, {yLabel: "accuracy"}) : el("p", {class: "muted"}, "After the first epoch.")),
    el("div", {class: "chart epoch-table table-wrap"}, epochTable(h)));
}

function epochTable(h) {
  if (!h.length) return el("p", {class: "muted"}, "");
  return el("table", {class: "kv"}, el("thead", {}, el("tr", {}, el("th", {}, "epoch"), el("th", {class: "num"},
    "train loss"), el("th", {class: "num"}, "train acc"), el("th", {class: "num"}, "test loss"),
  el("th", {class: "num"}, "test acc"))), el("tbody", {}, h.map((e) => el("tr", {}, el("td", {}, e.epoch),
    el("td", {class: "num"}, num(e.train_loss)), el("td", {class: "num"}, pct(e.train_acc)),
    el("td", {class: "num"}, num(e.test_loss)), el("td", {class: "num"}, pct(e.test_acc))))));
}

function drawSnapshot(live) {
  live.snapshotChanged = false;
  const s = live.snapshot;
  live.filters.dataset.step = s.step;
  const scale = Math.max(...s.weight.flat(3).map(Math.abs)) || 1;
  const filters = el("div", {class: "filters"});
  s.weight.forEach((filter, o) => {
    const kernel = filter[0];
    const canvas = divergingCanvas(kernel.flat(), kernel.length, kernel[0].length, scale);
    canvas.classList.add("filter");
    filters.append(el("figure", {}, canvas, el("figcaption", {}, `filter ${o}`)));
  });
  const flat = s.maps.flat(2);
  const low = Math.min(...flat), high = Math.max(...flat);
  const maps = el("div", {class: "maps train-maps"}, s.maps.map((m) =>
    greyCanvas(m.flat(), m.length, m[0].length, low, high, "pixels fmap")));
  const image = s.image.flat();
  const probe = greyCanvas(image, s.image.length, s.image[0].length, Math.min(...image), Math.max(...image),
    "pixels probe");
  live.filters.replaceChildren(
    el("p", {class: "sub"}, s.step ? `After step ${s.step.toLocaleString("en")} (epoch ${s.epoch}); layer ${s.layer}.`
      : `Before the first step: the random initial weights; layer ${s.layer}.`),
    filters,
    el("div", {class: "probe-row"}, el("figure", {}, probe, el("figcaption", {}, "the fixed test image")), maps));
}

function adviceAndHealth(live) {
  const card = healthCard({health: live.health});
  const advice = live.advice.length
    ? el("ul", {class: "advice"}, live.advice.map((a) => el("li", {}, `epoch ${a.epoch}: ${a.message}`)))
    : el("p", {class: "muted"}, "No advice so far: every figure is in its healthy range.");
  card.insertBefore(el("div", {}, el("h3", {}, "Advice"), advice), card.children[1] || null);
  return card;
}

// --- side by side ---------------------------------------------------------------------------------------

function compareCard(live) {
  const list = el("div", {class: "compare-list"}, el("p", {class: "muted"}, "Loading the runs…"));
  live.compareChart = el("div", {id: "train-compare", class: "charts"});
  live.compareCard = el("section", {class: "card"}, el("h2", {}, "Side by side"),
    el("p", {class: "sub"}, "Tick runs to draw them with this one on the same axes (loss against epochs, so runs of "
      + "other batch sizes line up)."), list, live.compareChart);
  api("/api/runs").then((data) => {
    const runs = data.runs.filter((r) => r.kind === "run" && r.id !== live.run);
    list.replaceChildren(...(runs.length ? runs.map((r) => el("label", {class: "check"},
      el("input", {type: "checkbox", value: r.id, onchange: (e) => toggleCompare(live, r.id, e.target.checked)}),
      el("span", {class: "mono"}, r.name), el("span", {class: "muted"}, settingsLine(r)))) :
      [el("p", {class: "muted"}, "No other run is served yet.")]));
  }).catch((e) => list.replaceChildren(el("p", {class: "error"}, e.message)));
  return live.compareCard;
}

function settingsLine(r) {
  const s = r.settings || {};
  return [s.model, s.lr !== undefined ? `lr ${s.lr}` : null, s.batch_size ? `batch ${s.batch_size}` : null,
    r.test_acc !== undefined && r.test_acc !== null ? pct(r.test_acc) : r.status].filter(Boolean).join(" · ");
}

async function toggleCompare(live, id, on) {
  if (!on) live.compare.delete(id);
  else live.compare.set(id, await api(runUrl(id)));
  if (on && live.compare.get(id).status === "running") refreshCompared(live, id);
  drawCompare(live);
}

/** A compared run that is training is fetched again every few seconds, while it is ticked and shown. */
function refreshCompared(live, id) {
  setTimeout(async () => {
    if (!live.stillCurrent() || !live.compare.has(id)) return;
    const d = await api(runUrl(id));
    if (!live.compare.has(id)) return;
    live.compare.set(id, d);
    drawCompare(live);
    if (d.status === "running") refreshCompared(live, id);
  }, 3000);
}

const epochsAt = (config) => (step) => (step * (config.batch_size || 1)) / (config.train_size || 1);

function drawCompare(live) {
  if (!live.compareChart) return;
  if (!live.compare.size) { live.compareChart.replaceChildren(); return; }
  const runs = [];
  if (live.run && live.config) {
    runs.push({name: live.run, config: live.config, losses: live.points, history: live.history});
  }
  for (const [id, d] of live.compare) runs.push({name: id, config: d.config || {}, losses: d.losses || [],
    history: d.history || []});
  const label = (r) => r.name;
  const loss = runs.map((r, i) => ({name: label(r), color: PALETTE[i % PALETTE.length],
    points: thin(r.losses).map(([step, y]) => [epochsAt(r.config)(step), y])}));
  const acc = runs.map((r, i) => ({name: label(r), color: PALETTE[i % PALETTE.length],
    points: r.history.map((e) => [e.epoch, 100 * e.test_acc])}));
  const legend = el("ul", {class: "chart-legend"}, runs.map((r, i) => el("li", {},
    swatch(PALETTE[i % PALETTE.length]), el("span", {class: "mono"}, r.name),
    el("span", {class: "muted"}, ` lr ${r.config.lr}, batch ${r.config.batch_size}, ${r.config.optimizer}`))));
  live.compareChart.replaceChildren(
    el("div", {class: "chart"}, el("h3", {}, "Training loss"),
      lineChart(loss, {logY: true, yLabel: "loss", xLabel: "epoch", legend: false})),
    el("div", {class: "chart"}, el("h3", {}, "Test accuracy (%)"),
      lineChart(acc, {yLabel: "accuracy", legend: false})), legend);
}

function swatch(color) {
  const i = el("i", {class: "swatch"});
  i.style.background = color;  // through the CSSOM: the page's Content-Security-Policy forbids style attributes
  return i;
}
