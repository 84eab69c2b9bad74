// The Clusters page: a profiles table with Start / Stop / Scale, and for each running cluster its
// engines (live, from the server-sent event stream at api/events), a throughput chart and the
// Python lines that connect a client. Every URL is relative so the page works wherever it is
// mounted (`parallax dashboard` at /, the Jupyter server extension at /parallax/).
//
// What the page shows is the newest snapshot it has taken. Every snapshot carries the version
// of the clusters' state it describes (one more each time a start, stop or scale ends), and so
// does the answer to an operation: the page never takes a snapshot older than what it shows or
// than an operation it has seen answered, so a slow answer cannot bring back a state the
// clusters have left (a stopped cluster shown running again).
"use strict";

const params = new URLSearchParams(window.location.search);
const token = params.get("token");
const rows = new Map(); // profile -> {tr, status, running, input, buttons}
const sections = new Map(); // profile -> section element
const history = new Map(); // profile -> {last: [t, done] | null, points: [[t, rate]]}
// Operations by profile: `until` is null while the request is in flight, then the version whose
// snapshot shows its outcome; the row says "stopping…" (etc.) until the page has taken it.
const pending = new Map();
const LABELS = { start: "starting…", stop: "stopping…", scale: "scaling…" };
const CHART_SECONDS = 60;
const INFO_SECONDS = 10; // an information banner clears itself after this; errors stay until dismissed

let view = { server: null, version: -1, clusters: [] };
let floor = -1; // the version of the newest operation answered: nothing older is taken
let streaming = false; // the event stream is open and has sent a snapshot
let messageTimer = null;
let nameEdited = false; // the user typed in the new cluster's name

function cookie(name) {
  const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : null;
}

// `request(method, path, body)`: the parsed JSON body and the response, or an Error with the
// server's message.
async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "token " + token;
  const xsrf = cookie("_xsrf"); // behind jupyter_server: its XSRF check for non-GET requests
  if (xsrf) headers["X-XSRFToken"] = xsrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const why = data && data.error ? data.error : `${response.status} ${response.statusText}`;
    throw new Error(why);
  }
  return { data, response };
}

async function api(method, path, body) {
  return (await request(method, path, body)).data;
}

// "1 engine", "2 engines".
function count(n, one, many) {
  return `${n} ${n === 1 ? one : many || one + "s"}`;
}

// --- the banner ---------------------------------------------------------------------------------

function showMessage(text, kind) {
  const box = document.getElementById("message");
  box.querySelector(".text").textContent = text;
  const info = kind === "info";
  box.className = "message" + (info ? " info" : "");
  box.setAttribute("role", info ? "status" : "alert");
  box.hidden = false;
  clearTimeout(messageTimer);
  if (info) messageTimer = setTimeout(clearMessage, INFO_SECONDS * 1000);
}

function clearMessage() {
  clearTimeout(messageTimer);
  document.getElementById("message").hidden = true;
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- taking snapshots ---------------------------------------------------------------------------

// Whether a snapshot of `version` from server run `server` is at least as new as what is shown.
// A new run of the server (it restarted) counts its versions from 0 again.
function isCurrent(server, version) {
  if (server !== view.server) return true;
  return version >= Math.max(view.version, floor);
}

function take(snapshot) {
  if (!isCurrent(snapshot.server, snapshot.version)) return;
  if (snapshot.server !== view.server && view.server !== null) {
    floor = -1;
    for (const [name, op] of pending) if (op.until !== null) pending.delete(name);
  }
  view = snapshot;
  for (const [name, op] of pending) {
    if (op.until !== null && view.version >= op.until) pending.delete(name);
  }
  render();
}

// An operation on `name` was answered with `version`: snapshots before it are out of date.
function answered(name, version) {
  floor = Math.max(floor, version);
  const op = pending.get(name);
  if (op) op.until = version;
  if (view.version >= version) pending.delete(name);
}

// The list from the REST API, for when the event stream is not there (yet): the stream sends
// every change, newer than any list.
async function refresh() {
  if (streaming) return;
  try {
    const { data, response } = await request("GET", "api/clusters");
    if (streaming) return;
    const server = response.headers.get("x-parallax-server") || view.server;
    const version = Number(response.headers.get("x-parallax-version") || "0");
    // Keep the engine lists shown: the list has only the counts.
    const known = new Map(view.clusters.map((c) => [c.profile, c]));
    const clusters = data.map((c) => ({ ...(known.get(c.profile) || { engine_list: [], tasks_done: 0 }), ...c }));
    take({ server, version, clusters });
  } catch (error) {
    showMessage(`Could not list the clusters: ${error.message}`);
  }
}

// --- profiles table ---------------------------------------------------------------------------

function profileRow(cluster) {
  const name = cluster.profile;
  const tr = el("tr", { "data-profile": name });
  const nameCell = el("th", { scope: "row" }, name);
  const status = el("td", { class: "status" });
  const enginesCell = el("td", { class: "engines-cell" });
  const running = el("span", { class: "running num", title: "engines running" });
  const id = "n-" + name;
  const label = el("label", { for: id, class: "sr-only" }, `Engines wanted for ${name}`);
  const input = el("input", { id, type: "number", min: "1", value: String(cluster.n || 2) });
  enginesCell.append(running, el("span", { class: "slash", "aria-hidden": "true" }, " / "), label, input);
  const actions = el("td");
  const buttons = {};
  for (const [action, text] of [["start", "Start"], ["stop", "Stop"], ["scale", "Scale"]]) {
    const button = el("button", { type: "button", "aria-label": `${text} ${name}`, "data-action": action }, text);
    button.addEventListener("click", () => act(name, action));
    actions.append(button);
    buttons[action] = button;
  }
  // Until the user types a number, the box follows the cluster's wanted count.
  const row = { tr, status, running, input, buttons, edited: false };
  input.addEventListener("input", () => {
    row.edited = true;
  });
  input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    const state = (view.clusters.find((c) => c.profile === name) || {}).state;
    act(name, state === "running" ? "scale" : "start");
  });
  tr.append(nameCell, status, enginesCell, actions);
  return row;
}

function renderProfiles(clusters) {
  const body = document.querySelector("#profiles tbody");
  const names = new Set(clusters.map((c) => c.profile));
  for (const [name, row] of rows) {
    if (!names.has(name)) {
      row.tr.remove();
      rows.delete(name);
    }
  }
  for (const cluster of clusters) {
    let row = rows.get(cluster.profile);
    if (!row) {
      row = profileRow(cluster);
      rows.set(cluster.profile, row);
      body.append(row.tr);
    }
    const op = pending.get(cluster.profile);
    row.status.textContent = op ? op.label : cluster.state;
    row.status.className = "status status-" + cluster.state;
    row.running.textContent = String(cluster.engines);
    if (cluster.n && !row.edited && document.activeElement !== row.input) {
      row.input.value = String(cluster.n);
    }
    const isRunning = cluster.state === "running";
    row.buttons.start.disabled = Boolean(op) || isRunning;
    row.buttons.stop.disabled = Boolean(op) || cluster.state === "stopped";
    row.buttons.scale.disabled = Boolean(op) || !isRunning;
  }
  document.getElementById("no-profiles").hidden = clusters.length > 0;
}

// The new cluster's name: "default" while no profile has that name, else empty (never the name
// of a profile that exists), unless the user has typed one.
function suggestName(clusters) {
  if (nameEdited) return;
  const input = document.getElementById("new-profile");
  input.value = clusters.some((c) => c.profile === "default") ? "" : "default";
}

async function act(name, action) {
  const row = rows.get(name);
  const n = row ? Number(row.input.value) : NaN;
  if (row) row.edited = false;
  clearMessage();
  pending.set(name, { label: LABELS[action], until: null });
  render();
  try {
    const path = "api/clusters/" + encodeURIComponent(name);
    if (action === "start") {
      const r = await api("POST", path + "/start", { n });
      answered(name, r.version);
      showMessage(`Cluster "${name}" started: ${count(r.engines, "engine")}.`, "info");
    } else if (action === "stop") {
      const r = await api("POST", path + "/stop");
      answered(name, r.version);
      showMessage(`Cluster "${name}" stopped.`, "info");
    } else {
      const r = await api("PATCH", path, { n });
      answered(name, r.version);
      showMessage(`Cluster "${name}" scaled to ${count(r.n, "engine")}.`, "info");
    }
  } catch (error) {
    pending.delete(name);
    showMessage(`Could not ${action} "${name}": ${error.message}`);
  } finally {
    render();
    await refresh();
  }
}

// --- running clusters: engines, chart, client code ----------------------------------------------

function clusterSection(name) {
  const node = document.getElementById("cluster-template").content.firstElementChild.cloneNode(true);
  node.dataset.profile = name;
  const heading = node.querySelector(".cluster-heading");
  heading.id = "cluster-" + name;
  heading.textContent = `Cluster "${name}"`;
  node.setAttribute("aria-labelledby", heading.id);
  node.querySelector("caption").textContent = `Engines of ${name}`;
  node.querySelector(".chart").setAttribute("aria-label", `Requests finished per second on ${name}, last ${CHART_SECONDS} s`);
  const code = `import parallax as ipp\nrc = ipp.Client(profile="${name}")`;
  node.querySelector(".snippet").textContent = code;
  const copy = node.querySelector(".copy");
  copy.setAttribute("aria-label", `Copy the client code for ${name}`);
  copy.addEventListener("click", async () => {
    const done = node.querySelector(".copied");
    try {
      await navigator.clipboard.writeText(code);
      done.textContent = "Copied.";
    } catch (_) {
      // No clipboard (plain http, old browser): select the text for Ctrl+C instead.
      const range = document.createRange();
      range.selectNodeContents(node.querySelector(".snippet"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      done.textContent = "Selected: press Ctrl+C.";
    }
  });
  drawChart(node, [], performance.now() / 1000);
  return node;
}

// Milliseconds since the epoch of an ISO 8601 date with up to nanoseconds (Date.parse is only
// sure to read milliseconds).
function parseDate(text) {
  return Date.parse(String(text).replace(/(\.\d{3})\d+/, "$1"));
}

function runningFor(started) {
  const seconds = Math.max(0, (Date.now() - parseDate(started)) / 1000);
  return `for ${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
}

// The current task: the start of a cell's code, or "apply" for a Python call, and for how long
// it has run (by the controller's clock, which says when the engine began it).
function taskCell(task) {
  const td = el("td", { class: "task" });
  if (!task) return td;
  const what = task.code || (task.msg_type === "apply_request" ? "apply" : task.msg_type);
  const since = el("span", { class: "since", "data-started": task.started }, runningFor(task.started));
  td.title = `${task.msg_type} ${task.msg_id}, begun ${new Date(parseDate(task.started)).toLocaleTimeString()}`;
  td.append(el("span", { class: "what" }, what), " ", since);
  return td;
}

function renderEngines(section, engines) {
  const body = section.querySelector(".engines tbody");
  body.replaceChildren();
  for (const e of engines) {
    const tr = el("tr", { "data-engine": String(e.id) });
    tr.append(
      el("td", { class: "num" }, String(e.id)),
      el("td", {}, e.host),
      el("td", { class: "num" }, String(e.pid)),
      el("td", {}, e.kernel),
      el("td", { class: "state state-" + e.state }, e.state),
      taskCell(e.current_task),
      el("td", { class: "num done" }, String(e.tasks_done)),
    );
    body.append(tr);
  }
}

function render() {
  renderProfiles(view.clusters);
  suggestName(view.clusters);
  const container = document.getElementById("clusters");
  const running = view.clusters.filter((c) => c.state === "running");
  const names = new Set(running.map((c) => c.profile));
  for (const [name, section] of sections) {
    if (!names.has(name)) {
      section.remove();
      sections.delete(name);
    }
  }
  for (const cluster of running) {
    let section = sections.get(cluster.profile);
    if (!section) {
      section = clusterSection(cluster.profile);
      sections.set(cluster.profile, section);
      container.append(section);
    }
    renderEngines(section, cluster.engine_list || []);
  }
}

// Once a second: a throughput sample per running cluster, and the running times of tasks.
function tick() {
  const now = performance.now() / 1000;
  for (const cluster of view.clusters) {
    if (cluster.state !== "running") {
      history.delete(cluster.profile);
      continue;
    }
    let h = history.get(cluster.profile);
    if (!h) {
      h = { last: null, points: [] };
      history.set(cluster.profile, h);
    }
    if (h.last) {
      const [t, done] = h.last;
      h.points.push([now, Math.max(0, (cluster.tasks_done - done) / (now - t))]);
    }
    h.points = h.points.filter(([t]) => now - t <= CHART_SECONDS);
    h.last = [now, cluster.tasks_done];
    const section = sections.get(cluster.profile);
    if (section) drawChart(section, h.points, now);
  }
  for (const since of document.querySelectorAll(".task .since")) {
    since.textContent = runningFor(since.dataset.started);
  }
}

// The smallest of 1, 2, 5 × 10^k that is at least `value` (> 0).
function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function rateText(rate) {
  return rate >= 10 ? String(Math.round(rate)) : rate.toFixed(1);
}

// Requests finished per second over the last CHART_SECONDS seconds: time runs left to right,
// `now` at the right edge; the y axis is labelled from 0 to a round number above the peak, and
// has no scale while nothing finished.
function drawChart(section, points, now) {
  const canvas = section.querySelector(".chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  const plot = { left: 34, right: w - 8, top: 8, bottom: h - 18 };
  ctx.clearRect(0, 0, w, h);
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = "#5b6474";
  ctx.strokeStyle = "#d5dae2";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(plot.left, plot.top);
  ctx.lineTo(plot.left, plot.bottom + 0.5);
  ctx.lineTo(plot.right, plot.bottom + 0.5);
  ctx.stroke();
  // Time axis.
  const x = (t) => plot.right - ((now - t) / CHART_SECONDS) * (plot.right - plot.left);
  ctx.textBaseline = "top";
  for (const [ago, text, align] of [[CHART_SECONDS, `−${CHART_SECONDS} s`, "left"], [CHART_SECONDS / 2, `−${CHART_SECONDS / 2} s`, "center"], [0, "now", "right"]]) {
    ctx.textAlign = align;
    ctx.fillText(text, x(now - ago), plot.bottom + 4);
  }
  const peak = Math.max(0, ...points.map(([, rate]) => rate));
  const last = points.length ? points[points.length - 1][1] : 0;
  const caption = section.querySelector(".chart-caption");
  ctx.textBaseline = "middle";
  if (peak === 0) {
    ctx.textAlign = "center";
    ctx.fillText(points.length ? "no request finished" : "measuring…", (plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2);
    caption.textContent = `Requests finished per second, last ${CHART_SECONDS} s: ${points.length ? "none" : "measuring"}.`;
    return;
  }
  // Rate axis: 0 and a round number above the peak.
  const top = niceCeiling(peak);
  const y = (rate) => plot.bottom - (rate / top) * (plot.bottom - plot.top);
  ctx.textAlign = "right";
  ctx.fillText("0", plot.left - 4, plot.bottom);
  ctx.fillText(`${rateText(top)}/s`, plot.left - 4, plot.top + 2);
  ctx.beginPath();
  ctx.setLineDash([2, 3]);
  ctx.moveTo(plot.left, y(top) + 0.5);
  ctx.lineTo(plot.right, y(top) + 0.5);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.strokeStyle = "#2458b3";
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(([t, rate], i) => {
    if (i === 0) ctx.moveTo(x(t), y(rate));
    else ctx.lineTo(x(t), y(rate));
  });
  ctx.stroke();
  caption.textContent =
    `Requests finished per second, last ${CHART_SECONDS} s: ${rateText(last)} now, at most ${rateText(peak)}.`;
}

// --- live events ---------------------------------------------------------------------------------

function connectEvents() {
  const live = document.getElementById("live");
  const source = new EventSource("api/events" + (token ? "?token=" + encodeURIComponent(token) : ""));
  source.addEventListener("clusters", (event) => {
    streaming = true;
    live.textContent = "live";
    live.classList.add("on");
    take(JSON.parse(event.data));
  });
  source.onerror = () => {
    streaming = false;
    live.textContent = "reconnecting…";
    live.classList.remove("on");
  };
}

document.getElementById("new-profile").addEventListener("input", () => {
  nameEdited = true;
});

document.getElementById("create").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const profile = document.getElementById("new-profile").value.trim();
  const n = Number(document.getElementById("new-n").value);
  clearMessage();
  const button = form.querySelector("button");
  button.disabled = true;
  pending.set(profile, { label: LABELS.start, until: null });
  render();
  try {
    const r = await api("POST", "api/clusters", { profile, n });
    answered(profile, r.version);
    showMessage(`Cluster "${profile}" started: ${count(r.engines, "engine")}.`, "info");
    // Ready for the next one: not the name of the cluster just started.
    nameEdited = false;
    document.getElementById("new-n").value = "2";
  } catch (error) {
    pending.delete(profile);
    showMessage(`Could not start "${profile}": ${error.message}`);
  } finally {
    button.disabled = false;
    render();
    await refresh();
  }
});

document.querySelector("#message .dismiss").addEventListener("click", clearMessage);

render();
refresh();
connectEvents();
setInterval(tick, 1000);
