// The resmon dashboard: one page over the same API the CLI uses, with the
// caller's token as a bearer header. Nothing here decides anything: every
// action is an API request, checked by the monitor against the token.
"use strict";

const TOKEN_KEY = "resmon.token";
const HOUR = 3600 * 1000;
const STATES = ["offline", "online_pending", "online", "offline_pending", "failed"];

const $ = (id) => document.getElementById(id);
const el = (tag, props, ...children) => {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const c of children) e.append(c);
  return e;
};

let token = sessionStorage.getItem(TOKEN_KEY);
let rights = [];
let resources = new Map(); // name -> status
let rows = new Map(); // name -> {tr, cells}
let calls = { at: 0, list: [] };
let history = new Map(); // name -> [{t, state}]
let feed = null; // AbortController of the event stream
let timers = [];
let nodes = null;
let drawnMarked = false;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!resp.ok) {
    throw new ApiError(resp.status, (data && data.error) || resp.status + " " + resp.statusText);
  }
  return data;
}

function say(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "";
  m.hidden = !text;
}

function showLogin(why) {
  stop();
  $("board").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("who").textContent = "";
  say(why || "");
  $("token").focus();
}

function stop() {
  timers.forEach(clearInterval);
  timers = [];
  if (feed) feed.abort();
  feed = null;
  setLive(false);
}

async function connect() {
  let me;
  try {
    me = await api("GET", "/v1/whoami");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (e.status === 401) return showLogin("The token was refused: it is not one of the monitor's [[api.token]] tokens.");
    if (e.status === 403) return showLogin("This token may not read the monitor (it lacks the query right): " + e.message);
    return showLogin("Cannot reach the monitor: " + e.message);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  rights = me.rights;
  $("who").textContent = me.caller + ": " + (rights.join(", ") || "no rights");
  $("login").hidden = true;
  $("board").hidden = false;
  $("signout").hidden = false;
  say("");
  // The feed replays the monitor's recent events from the start.
  rows.clear();
  history.clear();
  for (const row of $("resources").querySelectorAll(".row:not(.head)")) row.remove();
  $("events").replaceChildren();
  await refresh();
  follow();
  timers.push(setInterval(refresh, 5000));
  timers.push(setInterval(loadCalls, 1000));
  timers.push(setInterval(tick, 200));
  timers.push(setInterval(loadNodes, 5000));
  timers.push(setInterval(() => rows.forEach((row, name) => drawTimeline(name, row.cells.bar)), 30000));
  loadCalls();
  loadNodes();
}

// Resources ------------------------------------------------------------

let refreshing = null;
let again = false;

async function refresh() {
  if (refreshing) {
    again = true;
    return refreshing;
  }
  refreshing = (async () => {
    try {
      const data = await api("GET", "/v1/resources");
      resources = new Map(data.resources.map((r) => [r.name, r]));
      render();
    } catch (e) {
      if (e.status === 401 || e.status === 403) return showLogin("The token was refused: " + e.message);
      say("Reading the resources failed: " + e.message);
    }
  })();
  await refreshing;
  refreshing = null;
  if (again) {
    again = false;
    refresh();
  }
}

let soon = null;
function refreshSoon() {
  if (soon) return;
  soon = setTimeout(() => {
    soon = null;
    refresh();
  }, 100);
}

function render() {
  const body = $("resources");
  const counts = {};
  const added = document.createDocumentFragment();
  for (const [name, r] of resources) {
    counts[r.state] = (counts[r.state] || 0) + 1;
    let row = rows.get(name);
    if (!row) {
      row = makeRow(name);
      rows.set(name, row);
      added.append(row.tr);
    }
    fill(row, r);
  }
  body.append(added);
  for (const [name, row] of rows) {
    if (!resources.has(name)) {
      row.tr.remove();
      rows.delete(name);
    }
  }
  $("counts").textContent = STATES.filter((s) => counts[s])
    .map((s) => counts[s] + " " + s)
    .join(", ");
  // When the first full list was on the screen (after the next frame's
  // layout and paint), for whoever measures the page.
  if (!drawnMarked) {
    drawnMarked = true;
    requestAnimationFrame(() => setTimeout(() => performance.mark("resmon:rows-drawn"), 0));
  }
}

function makeRow(name) {
  const tr = el("div", { className: "row" });
  tr.setAttribute("role", "row");
  tr.dataset.name = name;
  const cells = {};
  for (const k of ["name", "state", "group", "deps", "pids", "restarts", "reason", "timeline", "actions"]) {
    cells[k] = el("span", { className: k });
    tr.append(cells[k]);
  }
  cells.name.textContent = name;
  const badge = el("span", { className: "badge" });
  cells.state.append(badge);
  cells.badge = badge;
  cells.bar = el("span", { className: "timeline" });
  cells.timeline.className = "";
  cells.timeline.append(cells.bar);
  cells.actions.append(...buttons(name));
  return { tr, cells, last: "" };
}

function fill(row, r) {
  const key = [r.state, r.group, r.pids.join(" "), r.restarts, r.reason, r.terminating, r.owner].join("|");
  if (key === row.last) return;
  row.last = key;
  const c = row.cells;
  c.badge.className = "badge state-" + r.state;
  c.badge.textContent = r.state.replace("_", " ") + (r.terminating ? " (terminating)" : "");
  c.group.textContent = r.group + (r.owner ? " @ " + r.owner : "");
  c.deps.textContent = (r.depends_on || []).join(", ");
  c.pids.textContent = r.pids.join(" ");
  c.restarts.textContent = r.restarts;
  c.reason.textContent = r.reason + (r.detail ? " (" + r.detail + ")" : "");
  drawTimeline(r.name, c.bar);
}

// Buttons appear only for the rights the token holds; the monitor checks
// them again on every request.
function buttons(name) {
  const out = [];
  const act = (label, path, body) => {
    const b = el("button", { textContent: label, type: "button" });
    b.dataset.action = label;
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        await api("POST", "/v1/resources/" + encodeURIComponent(name) + "/" + path, body);
        say(label + " " + name + ": asked", true);
        refreshSoon();
      } catch (e) {
        say(label + " " + name + " failed: " + e.message);
      } finally {
        b.disabled = false;
      }
    });
    out.push(b);
  };
  if (rights.includes("control")) {
    act("online", "online");
    act("offline", "offline");
  }
  if (rights.includes("terminate")) act("terminate", "terminate", { exit_code: 1 });
  return out;
}

// The timeline: one bar per resource, its states over the last hour: the
// state changes the event feed told, and the current state since the time
// the status gives. One gradient, no element per change.
const COLORS = {
  online: "#2e7d32",
  online_pending: "#b7791f",
  offline_pending: "#b7791f",
  offline: "#7a7a74",
  failed: "#c62828",
};

function drawTimeline(name, bar) {
  const now = Date.now();
  const from = now - HOUR;
  const r = resources.get(name);
  const since = r ? Date.parse(r.since) : now;
  const points = (history.get(name) || []).filter((p) => p.t >= from && p.t < since);
  const stops = [];
  const pct = (t) => Math.min(100, Math.max(0, ((t - from) / HOUR) * 100)).toFixed(2) + "%";
  const seg = (t0, t1, state) => {
    if (!state || t1 <= t0) return;
    // At least a sliver: a state of the last seconds shows too.
    const a = Math.min(t0, t1 - HOUR / 250);
    stops.push(COLORS[state] + " " + pct(a) + " " + pct(t1));
  };
  for (let i = 0; i < points.length; i++) {
    seg(points[i].t, i + 1 < points.length ? points[i + 1].t : since, points[i].state);
  }
  if (r) seg(Math.max(since, from), now, r.state);
  bar.style.background = stops.length
    ? "linear-gradient(to right, #eee 0%, #eee " + stops[0].split(" ")[1] + ", " + stops.join(", ") + ")"
    : "#eee";
  bar.title = points.map((p) => p.state + " at " + new Date(p.t).toLocaleTimeString()).concat(
    r ? [r.state + " since " + new Date(since).toLocaleTimeString()] : [],
  ).join("\n");
}

// Calls in flight ------------------------------------------------------

async function loadCalls() {
  try {
    const data = await api("GET", "/v1/calls");
    calls = { at: Date.now(), list: data.calls };
    tick();
  } catch (_) {
    // The next round tries again; a refused token shows in refresh.
  }
}

function tick() {
  const body = $("calls").tBodies[0];
  const passed = Date.now() - calls.at;
  const trs = calls.list.map((c) => {
    const left = c.remaining_ms - passed;
    const leftCell = el("td", { textContent: seconds(left) });
    if (left < 0) leftCell.className = "overdue";
    return el(
      "tr",
      {},
      el("td", { textContent: c.resource }),
      el("td", { textContent: c.entry }),
      el("td", { textContent: seconds(c.elapsed_ms + passed) }),
      leftCell,
    );
  });
  body.replaceChildren(...trs);
}

function seconds(ms) {
  return (ms / 1000).toFixed(1) + " s";
}

// Cluster ----------------------------------------------------------------

async function loadNodes() {
  try {
    nodes = await api("GET", "/v1/nodes");
  } catch (e) {
    $("cluster").hidden = true;
    return;
  }
  $("cluster").hidden = false;
  $("membership").textContent =
    "This node: " + nodes.node + (nodes.member ? ", a member" : ", not a member: " + (nodes.problem || "")) +
    (nodes.may_run_for_ms !== undefined ? ", lease " + seconds(nodes.may_run_for_ms) + " left" : "");
  const trs = nodes.nodes.map((n) => {
    const groups = el("td");
    for (const g of n.groups) {
      groups.append(g + " ");
      if (rights.includes("control")) groups.append(moveButton(g));
    }
    return el("tr", {}, el("td", { textContent: n.name }), el("td", { textContent: n.live ? "yes" : "no" }), groups);
  });
  $("nodes").tBodies[0].replaceChildren(...trs);
}

function moveButton(group) {
  const b = el("button", { textContent: "move", type: "button" });
  b.addEventListener("click", async () => {
    const live = nodes.nodes.filter((n) => n.live && !n.groups.includes(group)).map((n) => n.name);
    const to = prompt("Move group " + group + " to which node? (" + live.join(", ") + ")", live[0] || "");
    if (!to) return;
    try {
      const r = await api("POST", "/v1/groups/" + encodeURIComponent(group) + "/move", { node: to });
      say(r.message, true);
    } catch (e) {
      say("Moving " + group + " failed: " + e.message);
    }
  });
  return b;
}

// The event feed: the monitor's recent events, then new ones as they come,
// over one streaming request (no reload, no polling).

function setLive(on) {
  const l = $("live");
  l.textContent = on ? "live" : "offline";
  l.className = on ? "live on" : "live";
}

async function follow() {
  feed = new AbortController();
  const mine = feed;
  try {
    const resp = await fetch("/v1/events?follow=true", {
      headers: { Authorization: "Bearer " + token },
      signal: mine.signal,
      cache: "no-store",
    });
    if (!resp.ok) throw new ApiError(resp.status, resp.statusText);
    setLive(true);
    const reader = resp.body.getReader();
    const text = new TextDecoder();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += text.decode(value, { stream: true });
      const lines = rest.split("\n");
      rest = lines.pop();
      for (const line of lines) if (line.trim()) event(JSON.parse(line));
    }
  } catch (e) {
    if (mine.signal.aborted) return;
  }
  setLive(false);
  if (feed === mine) setTimeout(() => feed === mine && follow(), 2000);
}

function event(e) {
  const t = Date.parse(e.time);
  if (e.resource && e.state) {
    const h = history.get(e.resource) || [];
    h.push({ t, state: e.state });
    while (h.length && h[0].t < Date.now() - HOUR) h.shift();
    history.set(e.resource, h);
    refreshSoon();
  }
  const list = $("events");
  const li = el(
    "li",
    {},
    el("span", { className: "time", textContent: new Date(t).toLocaleTimeString() }),
    [e.kind, e.resource || e.group || "", e.state || "", e.reason].filter(Boolean).join("  ") +
      (e.count > 1 ? "  (x" + e.count + ")" : ""),
  );
  list.prepend(li);
  while (list.children.length > 500) list.lastChild.remove();
}

// Start ----------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    if (token) connect();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    showLogin("");
  });
  if (token) connect();
  else showLogin("");
});
