// npconv serve: the page's entry point. Routes (in the URL's hash, so links and the back button work):
//   #/draw/RUN   #/model/RUN   #/mistakes/RUN   #/runs   #/runs/FOLDER   #/report/FOLDER   #/train   #/train/RUN
// RUN and FOLDER are the ids the server gives (GET /api/runs).
import {api, go, runLabel, state} from "./api.js";
import {el} from "./charts.js";
import {showDraw} from "./draw.js";
import {showTrain} from "./train.js";
import {showMistakes, showModel, showRuns} from "./views.js";

function fillRunSelect() {
  const select = document.getElementById("run-select");
  select.replaceChildren();
  const groups = new Map();
  for (const run of state.runs) {
    const key = run.collection || "";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(run);
  }
  for (const [key, runs] of groups) {
    const parent = key ? el("optgroup", {label: key}) : select;
    for (const run of runs) parent.append(el("option", {value: run.id}, runLabel(run)));
    if (key) select.append(parent);
  }
  select.value = state.run || "";
}

async function loadRuns() {
  const data = await api("/api/runs");
  state.runs = data.runs;
  state.collections = data.collections;
  state.byId = new Map(data.runs.map((r) => [r.id, r]));
  if (!state.run || !state.byId.has(state.run)) state.run = data.default || (data.runs[0] && data.runs[0].id);
  fillRunSelect();
}

function parseHash() {
  const [view, id] = location.hash.replace(/^#\/?/, "").split("/");
  return {view: view || "draw", id: id ? decodeURIComponent(id) : null};
}

let renderToken = 0;

async function route() {
  const {view, id} = parseHash();
  const token = ++renderToken;
  state.view = view;
  if (["draw", "model", "mistakes"].includes(view) && id && state.byId.has(id)) state.run = id;
  document.getElementById("run-select").value = state.run || "";
  for (const a of document.querySelectorAll(".tabs a")) {
    a.classList.toggle("active", a.dataset.view === view || (view === "report" && a.dataset.view === "runs"));
    const target = a.dataset.view;
    const own = target === "runs" || target === "train";  // views of their own, not of the chosen model
    a.href = own ? `#/${target}` : `#/${target}/${encodeURIComponent(state.run || "")}`;
  }
  const main = document.getElementById("view");
  const stillCurrent = () => token === renderToken;
  try {
    if (view === "model") await showModel(main, state.run, stillCurrent);
    else if (view === "mistakes") await showMistakes(main, state.run, stillCurrent);
    else if (view === "runs" || view === "report") await showRuns(main, view, id, stillCurrent);
    else if (view === "train") await showTrain(main, id, stillCurrent);
    else await showDraw(main, state.run, stillCurrent);
  } catch (error) {
    if (stillCurrent()) main.replaceChildren(el("div", {class: "card"}, el("p", {class: "error"}, error.message)));
  }
}

async function start() {
  document.getElementById("run-select").addEventListener("change", (event) => {
    state.run = event.target.value;
    go(["draw", "model", "mistakes"].includes(state.view) ? state.view : "model", state.run);
  });
  try {
    await loadRuns();
  } catch (error) {
    document.getElementById("view").replaceChildren(el("div", {class: "card"}, el("p", {class: "error"},
      `The server did not answer: ${error.message}`)));
    return;
  }
  window.addEventListener("hashchange", route);
  await route();
}

start();
