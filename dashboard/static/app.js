// The Clusters page: a profiles table with Start / Stop / Scale, and for each running cluster its
// engines (live, from the server-sent event stream at api/events), a throughput chart and the
// Python lines that connect a client. Every URL is relative so the page works wherever it is
// mounted (`parallax dashboard` at /, the Jupyter server extension at /parallax/).
"use strict";

const params = new URLSearchParams(window.location.search);
const token = params.get("token");
const rows = new Map(); // profile -> {tr, cells, input, buttons}
const sections = new Map(); // profile -> section element
const history = new Map(); // profile -> {samples: [[t, done]], rates: []}
const pending = new Set(); // profiles with a request in flight
let latest = { clusters: [] };

function cookie(name) {
  const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : null;
}

async function api(method, path, body) {
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
  return data;
}

function showMessage(text, kind) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = "message" + (kind === "info" ? " info" : "");
  box.hidden = false;
}

function clearMessage() {
  document.getElementById("message").hidden = true;
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- profiles table ---------------------------------------------------------------------------

function profileRow(cluster) {
  const name = cluster.profile;
  const tr = el("tr", { "data-profile": name });
  const nameCell = el("th", { scope: "row" }, name);
  const status = el("td", { class: "status" });
  const running = el("td", { class: "running num" });
  const nCell = el("td");
  const id = "n-" + name;
  const label = el("label", { for: id, class: "sr-only" }, `Engines for ${name}`);
  const input = el("input", { id, type: "number", min: "1", value: String(cluster.n || 2) });
  nCell.append(label, input);
  const actions = el("td");
  const buttons = {};
  for (const [action, text] of [["start", "Start"], ["stop", "Stop"], ["scale", "Scale"]]) {
    const button = el("button", { type: "button", "aria-label": `${text} ${name}`, "data-action": action }, text);
    button.addEventListener("click", () => act(name, action));
    actions.append(button);
    buttons[action] = button;
  }
  input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    const state = (latest.clusters.find((c) => c.profile === name) || {}).state;
    act(name, state === "running" ? "scale" : "start");
  });
  tr.append(nameCell, status, running, nCell, actions);
  return { tr, status, running, input, buttons };
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
    const busy = pending.has(cluster.profile);
    const state = busy ? row.busyText : cluster.state;
    row.status.textContent = state;
    row.status.className = "status status-" + cluster.state;
    row.running.textContent = String(cluster.engines);
    const isRunning = cluster.state === "running";
    row.buttons.start.disabled = busy || isRunning;
    row.buttons.stop.disabled = busy || cluster.state === "stopped";
    row.buttons.scale.disabled = busy || !isRunning;
  }
  document.getElementById("no-profiles").hidden = clusters.length > 0;
}

async function act(name, action) {
  const row = rows.get(name);
  const n = row ? Number(row.input.value) : NaN;
  const labels = { start: "starting…", stop: "stopping…", scale: "scaling…" };
  clearMessage();
  pending.add(name);
  if (row) row.busyText = labels[action];
  renderProfiles(latest.clusters);
  try {
    const path = "api/clusters/" + encodeURIComponent(name);
    if (action === "start") {
      const r = await api("POST", path + "/start", { n });
      showMessage(`Cluster "${name}" started: ${r.engines} engines.`, "info");
    } else if (action === "stop") {
      await api("POST", path + "/stop");
      showMessage(`Cluster "${name}" stopped.`, "info");
    } else {
      const r = await api("PATCH", path, { n });
      showMessage(`Cluster "${name}" scaled to ${r.n} engines.`, "info");
    }
  } catch (error) {
    showMessage(`Could not ${action} "${name}": ${error.message}`);
  } finally {
    pending.delete(name);
    await refresh();
  }
}

async function refresh() {
  try {
    const clusters = await api("GET", "api/clusters");
    // Keep the live engine lists; the list call has only the counts.
    const known = new Map(latest.clusters.map((c) => [c.profile, c]));
    latest = {
      clusters: clusters.map((c) => ({ ...(known.get(c.profile) || { engine_list: [], tasks_done: 0 }), ...c })),
    };
    render();
  } catch (error) {
    showMessage(`Could not list the clusters: ${error.message}`);
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
  node.querySelector(".chart").setAttribute("aria-label", `Tasks finished per second on ${name}`);
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
  return node;
}

function renderEngines(section, engines) {
  const body = section.querySelector(".engines tbody");
  body.replaceChildren();
  for (const e of engines) {
    const tr = el("tr", { "data-engine": String(e.id) });
    const task = e.current_task ? e.current_task.code || e.current_task.msg_id : "";
    tr.append(
      el("td", { class: "num" }, String(e.id)),
      el("td", {}, e.host),
      el("td", { class: "num" }, String(e.pid)),
      el("td", {}, e.kernel),
      el("td", { class: "state state-" + e.state }, e.state),
      el("td", { class: "task" }, task),
      el("td", { class: "num done" }, String(e.tasks_done)),
    );
    body.append(tr);
  }
}

function render() {
  renderProfiles(latest.clusters);
  const container = document.getElementById("clusters");
  const running = latest.clusters.filter((c) => c.state === "running");
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

function sample() {
  const now = performance.now() / 1000;
  for (const cluster of latest.clusters) {
    if (cluster.state !== "running") {
      history.delete(cluster.profile);
      continue;
    }
    let h = history.get(cluster.profile);
    if (!h) {
      h = { last: null, rates: [] };
      history.set(cluster.profile, h);
    }
    if (h.last) {
      const [t, done] = h.last;
      const rate = Math.max(0, (cluster.tasks_done - done) / (now - t));
      h.rates.push(rate);
      if (h.rates.length > 60) h.rates.shift();
    }
    h.last = [now, cluster.tasks_done];
    const section = sections.get(cluster.profile);
    if (section) drawChart(section, h.rates);
  }
}

function drawChart(section, rates) {
  const canvas = section.querySelector(".chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...rates);
  ctx.strokeStyle = "#d5dae2";
  ctx.beginPath();
  ctx.moveTo(0, h - 0.5);
  ctx.lineTo(w, h - 0.5);
  ctx.stroke();
  ctx.strokeStyle = "#2458b3";
  ctx.lineWidth = 2;
  ctx.beginPath();
  rates.forEach((r, i) => {
    const x = (i / 59) * (w - 4) + 2;
    const y = h - 4 - (r / max) * (h - 18);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  const last = rates.length ? rates[rates.length - 1] : 0;
  ctx.fillStyle = "#5b6474";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(`${last.toFixed(1)} tasks/s (max ${max.toFixed(1)})`, 6, 12);
  section.querySelector(".chart-caption").textContent =
    `Tasks finished per second: ${last.toFixed(1)} now, over the last minute up to ${max.toFixed(1)}`;
}

// --- live events ---------------------------------------------------------------------------------

function connectEvents() {
  const live = document.getElementById("live");
  const source = new EventSource("api/events" + (token ? "?token=" + encodeURIComponent(token) : ""));
  source.addEventListener("clusters", (event) => {
    latest = JSON.parse(event.data);
    live.textContent = "live";
    live.classList.add("on");
    render();
  });
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.classList.remove("on");
  };
}

document.getElementById("create").addEventListener("submit", async (event) => {
  event.preventDefault();
  const profile = document.getElementById("new-profile").value.trim();
  const n = Number(document.getElementById("new-n").value);
  clearMessage();
  const button = event.target.querySelector("button");
  button.disabled = true;
  try {
    const r = await api("POST", "api/clusters", { profile, n });
    showMessage(`Cluster "${profile}" started: ${r.engines} engines.`, "info");
  } catch (error) {
    showMessage(`Could not start "${profile}": ${error.message}`);
  } finally {
    button.disabled = false;
    await refresh();
  }
});

refresh();
connectEvents();
setInterval(sample, 1000);
