// Small drawing helpers shared by the views: DOM elements, greyscale images, bars, SVG line charts.
// Text always goes in as text (never as HTML), so nothing read from a run can run as code.

const SVG = "http://www.w3.org/2000/svg";

/** An element: el("div", {class: "card"}, child, "text", ...). Attributes starting with "on" are listeners. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) if (child) node.append(child instanceof Node ? child : String(child));
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
}

export const pct = (x, digits = 2) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(digits)} %`);
export const num = (x, digits = 4) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));

/** A canvas showing `values` (row-major, h x w) in grey: `low` black, `high` white. */
export function greyCanvas(values, h, w, low, high, cls = "pixels") {
  const canvas = el("canvas", {class: cls, width: w, height: h});
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const span = high > low ? high - low : 1;
  for (let i = 0; i < h * w; i++) {
    const v = Math.max(0, Math.min(255, Math.round((255 * (values[i] - low)) / span)));
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

/** A 28x28 uint8 image (a list of rows) as a canvas, white ink on black as MNIST stores it. */
export function digitCanvas(rows) {
  return greyCanvas(rows.flat(), rows.length, rows[0].length, 0, 255);
}

/** Weights as a canvas: blue negative, white zero, red positive, scaled by the largest magnitude `scale`. */
export function divergingCanvas(values, h, w, scale) {
  const canvas = el("canvas", {class: "pixels", width: w, height: h});
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const t = Math.max(-1, Math.min(1, values[i] / (scale || 1)));
    const [r, g, b] = t >= 0 ? mix([255, 255, 255], [220, 38, 38], t) : mix([255, 255, 255], [37, 99, 235], -t);
    img.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

const mix = (a, b, t) => a.map((v, i) => Math.round(v + (b[i] - v) * t));

/** A canvas of vertical bars, one per value, zero line at its place; drawn at the device's pixel ratio. */
export function barsCanvas(values, {labels = null, highlight = -1} = {}) {
  const canvas = el("canvas", {class: labels ? "bars labelled" : "bars"});
  requestAnimationFrame(() => drawBars(canvas, values, labels, highlight));
  return canvas;
}

function drawBars(canvas, values, labels, highlight) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 260, height = canvas.clientHeight || 86;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  const styles = getComputedStyle(document.documentElement);
  const base = labels ? 14 : 2;
  let low = 0, high = 0;
  for (const v of values) { low = Math.min(low, v); high = Math.max(high, v); }
  const span = high - low || 1;
  const zero = 2 + ((height - base - 4) * high) / span;
  const step = width / values.length;
  const gap = step > 4 ? Math.min(2, step * 0.2) : 0;
  for (let i = 0; i < values.length; i++) {
    const y = 2 + ((height - base - 4) * (high - values[i])) / span;
    ctx.fillStyle = i === highlight ? styles.getPropertyValue("--accent") : values[i] >= 0 ? "#7c83d6" : "#d28b6a";
    ctx.fillRect(i * step + gap / 2, Math.min(y, zero), Math.max(step - gap, 0.6), Math.max(Math.abs(zero - y), 0.8));
  }
  ctx.fillStyle = styles.getPropertyValue("--line");
  ctx.fillRect(0, zero, width, 1);
  if (labels) {
    ctx.fillStyle = styles.getPropertyValue("--muted");
    ctx.font = "10px system-ui, sans-serif";
    ctx.textAlign = "center";
    labels.forEach((label, i) => ctx.fillText(String(label).slice(0, 6), (i + 0.5) * step, height - 2));
  }
}

/** "Nice" tick values covering [low, high]. */
function ticks(low, high, count = 5) {
  const span = high - low || Math.abs(high) || 1;
  const raw = span / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function formatTick(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(0).replace("e+", "e");
  return String(+v.toPrecision(3));
}

/**
 * An SVG line chart. series: [{name, color, points: [[x, y], ...], dash}]; options: {logY, yLabel, band: [lo, hi],
 * markers: [{x, label, color}] (vertical lines, e.g. where a run diverged), legend: false (the caller draws it)}.
 * Non-finite and (on a log scale) non-positive points are left out.
 */
export function lineChart(series, {logY = false, yLabel = "", xLabel = "epoch", band = null, height = 220,
  markers = [], legend: withLegend = true} = {}) {
  const W = 520, H = height, left = 46, right = 10, top = 10, bottom = 44;
  const keep = ([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!logY || y > 0);
  const clean = series.map((s) => ({...s, points: s.points.filter(keep)})).filter((s) => s.points.length);
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": yLabel});
  if (!clean.length) {
    root.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "no data"));
    return root;
  }
  const xs = clean.flatMap((s) => s.points.map((p) => p[0]));
  const f = logY ? Math.log10 : (v) => v;
  let ys = clean.flatMap((s) => s.points.map((p) => f(p[1])));
  if (band) ys = ys.concat(band.map(f));
  let [x0, x1] = [Math.min(...xs, ...markers.map((m) => m.x)), Math.max(...xs, ...markers.map((m) => m.x))];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= logY ? 0.5 : Math.abs(y0) * 0.1 || 1; y1 += logY ? 0.5 : Math.abs(y1) * 0.1 || 1; }
  const pad = (y1 - y0) * 0.06;
  y0 -= pad; y1 += pad;
  const X = (x) => left + ((x - x0) / (x1 - x0)) * (W - left - right);
  const Y = (y) => top + ((y1 - f(y)) / (y1 - y0)) * (H - top - bottom);
  const g = svg("g");
  const yTicks = logY ? ticks(Math.floor(y0), Math.ceil(y1), 4).filter((t) => Number.isInteger(t) && t >= y0 && t <= y1)
    .map((t) => 10 ** t) : ticks(y0, y1, 4);
  for (const t of yTicks) {
    g.append(svg("line", {class: "gridline", x1: left, x2: W - right, y1: Y(t), y2: Y(t)}));
    g.append(svg("text", {x: left - 5, y: Y(t) + 3, "text-anchor": "end"}, formatTick(t)));
  }
  const xTicks = ticks(x0, x1, 6).filter((t) => Number.isInteger(t));
  for (const t of xTicks) g.append(svg("text", {x: X(t), y: H - bottom + 14, "text-anchor": "middle"}, t));
  g.append(svg("line", {class: "axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom}));
  g.append(svg("text", {x: (left + W - right) / 2, y: H - bottom + 27, "text-anchor": "middle"}, xLabel));
  if (band) {
    g.append(svg("rect", {x: left, width: W - left - right, y: Y(band[1]), height: Math.abs(Y(band[0]) - Y(band[1])),
      fill: "#16a34a", opacity: 0.08}));
  }
  for (const s of clean) {
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    g.append(svg("path", {d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash || null,
      "stroke-linejoin": "round"}));
    if (s.points.length <= 30) {
      for (const [x, y] of s.points) {
        g.append(svg("circle", {cx: X(x), cy: Y(y), r: 2.4, fill: s.color},
          svg("title", {}, `${s.name}, ${xLabel} ${x}: ${formatTick(y)}`)));
      }
    }
  }
  for (const m of markers) {
    g.append(svg("line", {x1: X(m.x), x2: X(m.x), y1: top, y2: H - bottom, stroke: m.color, "stroke-width": 1.5,
      "stroke-dasharray": "4 3", class: "marker"}, svg("title", {}, m.label)));
    const right = X(m.x) > W / 2;
    g.append(svg("text", {x: X(m.x) + (right ? -4 : 4), y: top + 10, "text-anchor": right ? "end" : "start",
      class: "marker-label", fill: m.color}, m.label));
  }
  const legend = svg("g", {class: "legend"});
  let lx = left;
  for (const s of clean) {
    legend.append(svg("line", {x1: lx, x2: lx + 16, y1: H - 6, y2: H - 6, stroke: s.color, "stroke-width": 2.5,
      "stroke-dasharray": s.dash || null}));
    legend.append(svg("text", {x: lx + 20, y: H - 2.5}, s.name));
    lx += 28 + 6.2 * s.name.length;
  }
  root.append(g);
  if (withLegend) root.append(legend);
  return root;
}

/** Colours for one line per layer. */
export const PALETTE = ["#4f46e5", "#0891b2", "#16a34a", "#d97706", "#dc2626", "#9333ea", "#db2777", "#64748b"];
