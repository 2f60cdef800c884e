// The Draw view: a drawing pad (mouse, pen, touch), the prediction as it is drawn, the 28x28 image the model
// sees, and every layer's activations. Everything is computed by the server: POST /api/predict.
import {api, state} from "./api.js";
import {barsCanvas, digitCanvas, el, greyCanvas} from "./charts.js";

const SIZE = 280;       // the pad's pixels (it is shown larger or smaller by CSS)
const PEN = 20;         // stroke width in pad pixels: about MNIST's stroke for a digit drawn across the pad
const THROTTLE_MS = 120; // at most one request this often while drawing
const MAX_MAPS = 64;    // feature maps shown per layer

// The pad outlives the view, so a drawing survives a visit to another view.
const pad = {canvas: null, drawn: false, file: null};
let inFlight = false, again = false, timer = null, latest = 0;
let ui = null;

function makePad() {
  const canvas = el("canvas", {id: "draw", width: SIZE, height: SIZE, "aria-label": "Drawing pad: draw a digit"});
  const ctx = canvas.getContext("2d");
  clearPad(ctx);
  let last = null;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * (SIZE / box.width), (event.clientY - box.top) * (SIZE / box.height)];
  };
  const stroke = (from, to) => {
    ctx.strokeStyle = "#111";
    ctx.lineWidth = PEN;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
  };
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    if (pad.file) { clearPad(ctx); pad.file = null; }
    last = point(event);
    stroke(last, last);
    pad.drawn = true;
    ui && ui.hint.remove();
    soon();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) {
      const p = point(e);
      stroke(last, p);
      last = p;
    }
    soon();
  });
  const end = () => {
    if (!last) return;
    last = null;
    clearTimeout(timer);
    timer = null;
    classifyNow();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  return canvas;
}

function clearPad(ctx) {
  ctx.fillStyle = "#fff"; // opaque white paper: the server reads the dark strokes as ink
  ctx.fillRect(0, 0, SIZE, SIZE);
}

/** Classify soon (while drawing): at most one request every THROTTLE_MS. */
function soon() {
  if (!timer) timer = setTimeout(() => { timer = null; classifyNow(); }, THROTTLE_MS);
}

function padBlob() {
  return new Promise((resolve) => pad.canvas.toBlob(resolve, "image/png"));
}

/** Send the drawing (or the file dropped) to the server; one request at a time, the newest drawing wins. */
async function classifyNow() {
  if (!pad.drawn && !pad.file) return;
  if (inFlight) { again = true; return; }
  inFlight = true;
  const id = ++latest;
  const run = state.run;
  try {
    const body = pad.file || await padBlob();
    const type = pad.file ? pad.file.type || "application/octet-stream" : "image/png";
    const result = await api(`/api/predict?run=${encodeURIComponent(run)}&activations=1`,
      {method: "POST", headers: {"Content-Type": type}, body});
    if (ui && id === latest && run === state.run) render(result);
  } catch (error) {
    if (ui) showError(error.message);
  } finally {
    inFlight = false;
    if (again) { again = false; classifyNow(); }
  }
}

function showError(message) {
  ui.prediction.textContent = "";
  ui.verdict.replaceChildren(el("span", {class: "error"}, message));
}

function clearAll() {
  clearPad(pad.canvas.getContext("2d"));
  pad.drawn = false;
  pad.file = null;
  latest++;
  if (!ui) return;
  ui.padWrap.append(ui.hint);
  ui.prediction.textContent = "";
  ui.answer.classList.remove("unsure");
  emptyAnswer();
}

/** Show a file (picked or dropped) on the pad and classify the file itself. */
function useFile(file) {
  if (!file) return;
  pad.file = file;
  pad.drawn = false;
  ui && ui.hint.remove();
  const ctx = pad.canvas.getContext("2d");
  clearPad(ctx);
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    const scale = Math.min(SIZE / img.width, SIZE / img.height);
    const w = img.width * scale, h = img.height * scale;
    ctx.drawImage(img, (SIZE - w) / 2, (SIZE - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  img.onerror = () => URL.revokeObjectURL(url);
  img.src = url;
  classifyNow();
}

function probabilityRows(classes, probabilities, top = -1) {
  const rows = [];
  classes.forEach((name, k) => {
    const p = probabilities ? probabilities[k] : 0;
    const fill = el("div", {class: "fill"});
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    rows.push(el("div", {class: `label${k === top ? " top" : ""}`}, name),
      el("div", {class: `track${k === top ? " top" : ""}`}, fill),
      el("div", {class: "value"}, probabilities ? `${(100 * p).toFixed(1)}%` : ""));
  });
  return rows;
}

function decode(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

function layerCard(activation, classes, isLast) {
  const values = decode(activation.data);
  const shape = activation.shape;
  const info = el("div", {class: "layer-info"},
    el("header", {}, el("h3", {}, `${activation.layer} · ${activation.type}`),
      el("span", {class: "shape"}, shape.join(" × "))),
    el("div", {class: "desc"}, activation.description));
  const body = el("div", {class: "layer-body"});
  const card = el("div", {class: "layer", "data-kind": activation.kind}, info, body);
  if (activation.kind === "maps") {
    const [c, h, w] = shape;
    const low = Math.min(0, activation.min), high = activation.max;
    const maps = el("div", {class: "maps"});
    for (let i = 0; i < Math.min(c, MAX_MAPS); i++) {
      const map = greyCanvas(values.subarray(i * h * w, (i + 1) * h * w), h, w, low, high, "pixels fmap");
      map.title = `channel ${i}`;
      maps.append(map);
    }
    body.append(maps);
    if (c > MAX_MAPS) body.append(el("p", {class: "sub"}, `and ${c - MAX_MAPS} more channels`));
  } else if (activation.kind === "vector") {
    const labelled = isLast && values.length === classes.length;
    let top = -1;
    if (labelled) values.forEach((v, i) => { if (top < 0 || v > values[top]) top = i; });
    body.append(barsCanvas(Array.from(values), {labels: labelled ? classes : null, highlight: top}));
    info.append(el("p", {class: "sub"}, labelled ? "the logits, before softmax"
      : `${values.length} values, from ${activation.min.toFixed(2)} to ${activation.max.toFixed(2)}`));
  } else {
    body.append(el("p", {class: "sub"}, `shape ${shape.join(" × ")}`));
  }
  return card;
}

function render(result) {
  ui.classes = result.classes;
  const top = result.prediction;
  ui.prediction.textContent = result.label;
  ui.prediction.classList.toggle("long", result.label.length > 2);
  ui.answer.classList.toggle("unsure", result.not_sure);
  const p = result.probabilities[top];
  ui.verdict.replaceChildren(result.not_sure
    ? el("div", {}, el("span", {class: "unsure-badge"}, "not sure"),
      el("div", {}, `Its first choice has only ${(100 * p).toFixed(0)} %: it is guessing.`))
    : el("div", {}, el("b", {}, `${(100 * p).toFixed(1)} %`), " sure"));
  ui.probs.replaceChildren(...probabilityRows(result.classes, result.probabilities, top));
  ui.seen.replaceChildren(digitCanvas(result.input));
  const n = result.activations.length;
  ui.layers.replaceChildren(...result.activations.map((a, i) => layerCard(a, result.classes, i === n - 1)));
}

export async function showDraw(main, runId, stillCurrent) {
  if (!pad.canvas) pad.canvas = makePad();
  const run = state.byId.get(runId);
  const classes = (run && run.classes) || ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
  const digits = classes.every((c) => /^\d$/.test(c));
  const hint = el("div", {class: "pad-hint"}, digits ? "Draw a digit here" : "Draw here, or drop an image");
  const padWrap = el("div", {class: "pad-wrap"}, pad.canvas);
  if (!pad.drawn && !pad.file) padWrap.append(hint);
  const fileInput = el("input", {type: "file", accept: "image/png,image/jpeg", onchange: (e) => useFile(e.target.files[0])});
  const prediction = el("div", {id: "prediction", "aria-live": "polite"});
  const verdict = el("div", {class: "verdict"});
  const answer = el("div", {class: "answer"}, prediction, verdict);
  const probs = el("div", {class: "probs"});
  const seen = el("div", {class: "seen-canvas"});
  const layers = el("div", {class: "layers"});
  for (const [type, on] of [["dragenter", true], ["dragover", true], ["dragleave", false], ["drop", false]]) {
    padWrap.addEventListener(type, (event) => {
      event.preventDefault();
      padWrap.classList.toggle("dragging", on);
      if (type === "drop") useFile(event.dataTransfer.files[0]);
    });
  }
  if (!stillCurrent()) return;
  main.replaceChildren(
    el("div", {class: "grid draw-top"},
      el("section", {class: "card"},
        el("h2", {}, digits ? "Draw a digit" : "Draw or drop an image"),
        el("p", {class: "sub"}, "Mouse, pen or finger; or drop a PNG or JPEG file on the pad."),
        padWrap,
        el("div", {class: "row pad-tools"},
          el("button", {id: "clear", type: "button", onclick: clearAll}, "Clear"),
          el("button", {type: "button", onclick: () => fileInput.click()}, "Open image…"), fileInput)),
      el("section", {class: "card"},
        el("h2", {}, "Prediction"),
        el("p", {class: "sub"}, run ? `${run.name}` : "no model"),
        answer, probs),
      el("section", {class: "card seen"},
        el("h2", {}, "What the model sees"),
        el("div", {class: "seen-inner"}, seen,
          el("p", {class: "sub"}, digits
            ? "Your drawing as MNIST's digits were made: cropped, fitted into 20 × 20, centred by its mass in 28 × 28."
            : "Your image as the training images were made: cropped, fitted into 28 × 28, centred by mass.")))),
    el("section", {class: "card inside"},
      el("h2", {}, "Inside the network"),
      el("p", {class: "sub"}, "Each layer's output for this image, in order. Feature maps in grey (black: the layer's "
        + "lowest value or zero, white: its highest); one-dimensional layers as bars."),
      layers));
  ui = {prediction, verdict, answer, probs, seen, layers, padWrap, hint, classes};
  if (run && !run.has_model) {
    ui.layers.replaceChildren(el("p", {class: "notice"}, `${run.name} has no model file (it did not complete): `
      + "choose another model above."));
    return;
  }
  emptyAnswer();
  if (pad.drawn || pad.file) classifyNow();
}

/** The answer panels before anything is drawn. */
function emptyAnswer() {
  ui.verdict.replaceChildren(el("span", {class: "muted"}, "Draw something to see what the model thinks."));
  ui.probs.replaceChildren(...probabilityRows(ui.classes, null));
  ui.seen.replaceChildren(el("canvas", {class: "pixels", width: 28, height: 28}));
  ui.layers.replaceChildren(el("p", {class: "empty-state"}, "The activations of every layer appear here."));
}
