// The page's shared state and its one way to talk to the server.

export const state = {runs: [], collections: [], byId: new Map(), run: null, view: "draw"};

/** GET or POST JSON from the server's API; throws an Error with the server's message on a 4xx/5xx. */
export async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: said below */ }
  if (!response.ok) throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  return body;
}

export function runLabel(run) {
  const acc = run.test_acc !== undefined && run.test_acc !== null ? ` · ${(100 * run.test_acc).toFixed(2)} %` : "";
  return `${run.name}${acc}${run.has_model ? "" : " (no model)"}`;
}

/** Go to `view` (for the current run, or `id`). */
export function go(view, id = null) {
  location.hash = `#/${view}/${encodeURIComponent(id || (view === "runs" || view === "report" ? "" : state.run || ""))}`
    .replace(/\/$/, "");
}

