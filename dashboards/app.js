// Live monitor: one EventSource, state in plain Maps, DOM touched at most once per animation frame.
import { drawSeries } from "./chart.js";

const MAX_ROWS = 150;          // rows in the table
const MAX_TICKETS = 2000;      // tickets remembered (for late events about them)
const SERIES_S = 300;          // tickets/s chart window

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const hhmmss = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });

const state = {
  tickets: new Map(),          // id -> row data, insertion order = arrival order
  dirtyRows: new Set(),
  newRows: [],
  incidents: new Map(),        // gid -> {incident_id, size, sample, team, assignee, hits: [ts]}
  agents: new Map(),
  queues: {},
  series: [],                  // [[second, count]]
  flood: null,
  breaker: null,
  latency: [],
  dirty: new Set(),
  evCount: 0,
};

// what tests and operators can inspect from the console
const monitor = (window.monitor = { seen: [], lastId: "", connects: 0, state });

function touch(...panels) {
  for (const p of panels) state.dirty.add(p);
  if (!touch.pending) {
    touch.pending = true;
    requestAnimationFrame(render);
  }
}

function ticket(id, ts) {
  let t = state.tickets.get(id);
  if (!t) {
    t = { id, ts: ts || Date.now(), status: "received" };
    state.tickets.set(id, t);
    state.newRows.push(t);
    if (state.tickets.size > MAX_TICKETS) state.tickets.delete(state.tickets.keys().next().value);
  }
  state.dirtyRows.add(t);
  touch("rows");
  return t;
}

function incident(gid) {
  let inc = state.incidents.get(gid);
  if (!inc) {
    inc = { incident_id: gid, size: 0, hits: [], sample: "" };
    state.incidents.set(gid, inc);
    refreshIncidents();
  }
  return inc;
}

const handlers = {
  "ticket.received": (e) => ticket(e.ticket_id, e.ts),
  "ticket.classified": (e) => Object.assign(ticket(e.ticket_id, e.ts), { status: "enriched", ...(e.data || {}) }),
  "ticket.grouped": (e) => Object.assign(ticket(e.ticket_id, e.ts), { status: "grouped", group: e.group }),
  "incident.opened": (e) => {
    Object.assign(ticket(e.ticket_id, e.ts), { status: "grouped", group: e.group, incident: true });
    Object.assign(incident(e.group), { size: +e.size, status: "open" });
    touch("incidents");
  },
  "incident.grew": (e) => {
    Object.assign(ticket(e.ticket_id, e.ts), { status: "grouped", group: e.group, incident: true });
    const inc = incident(e.group);
    inc.size = Math.max(inc.size, +e.size);
    inc.hits.push(e.ts);
    touch("incidents");
  },
  "incident.updated": (e) => {
    const inc = incident(e.group);
    Object.assign(inc, { size: Math.max(inc.size, +e.size), rate: +e.rate || inc.rate, peak_rate: +e.peak_rate || inc.peak_rate });
    touch("incidents");
  },
  // the storm behind the incident is over (calm for the quiet period) or bursting again: no page, the incident stays
  "incident.storm_ended": (e) => {
    Object.assign(incident(e.group), { storm_ended_at: +e.ts || Date.now() });
    touch("incidents");
  },
  "incident.storm_resumed": (e) => {
    Object.assign(incident(e.group), { storm_ended_at: null });
    touch("incidents");
  },
  "incident.merged": (e) => {
    // one storm, one incident: the merged one's hits go to the survivor, which takes the merged size
    const gone = state.incidents.get(e.merged);
    state.incidents.delete(e.merged);
    const inc = incident(e.group);
    Object.assign(inc, { size: Math.max(inc.size, +e.size), status: "open" });
    if (gone) inc.hits = inc.hits.concat(gone.hits).sort((a, b) => a - b);
    for (const t of state.tickets.values()) {
      if (t.group !== e.merged) continue;
      Object.assign(t, { group: e.group, incident: true });
      state.dirtyRows.add(t);
    }
    touch("incidents", "rows");
  },
  "incident.resolved": (e) => {
    state.incidents.delete(e.group);
    touch("incidents");
  },
  "incident.reopened": (e) => {
    Object.assign(ticket(e.ticket_id, e.ts), { status: "grouped", group: e.group, incident: true });
    Object.assign(incident(e.group), { size: +e.size, status: "open", reopened: e.reason });
    refreshIncidents();
    touch("incidents");
  },
  "incident.split": (e) => {
    const inc = state.incidents.get(e.group);
    if (inc) inc.size = +e.size;
    refreshIncidents();
    touch("incidents");
  },
  "incident.followup": (e) => Object.assign(ticket(e.ticket_id, e.ts), { status: "grouped", group: e.group, follows: e.group }),
  "ticket.assigned": (e) => Object.assign(ticket(e.ticket_id, e.ts), { status: "assigned", assignee: e.assignee, team: e.team || undefined }),
  "ticket.queued": (e) => Object.assign(ticket(e.ticket_id, e.ts), { status: "queued", team: e.team }),
  "ticket.attached": (e) => Object.assign(ticket(e.ticket_id, e.ts), { status: "attached", assignee: e.assignee, team: e.team }),
  "ticket.resolved": (e) => Object.assign(ticket(e.ticket_id, e.ts), { status: "resolved" }),
  "ticket.dead": (e) => Object.assign(ticket(e.ticket_id, e.ts), { status: "dead", reason: e.reason }),
  "agent.load": (e) => {
    const a = state.agents.get(e.agent);
    if (a) a.load = +e.load;
    else refreshAgents();
    touch("agents");
  },
  "agent.updated": () => refreshAgents(),
  "breaker.state": (e) => {
    // transitions carry no escalation rate: keep the last one the flood meter sent
    state.breaker = { escalation_rate: state.breaker?.escalation_rate, ...e };
    if (e.latency_ms != null) state.latency.push(+e.latency_ms);
    if (state.latency.length > 120) state.latency.shift();
    touch("breaker");
  },
  "flood.state": (e) => {
    state.flood = e;
    const last = state.series[state.series.length - 1];
    if (!last || last[0] < e.t) state.series.push([e.t, e.count]);
    while (state.series.length > SERIES_S) state.series.shift();
    if (e.escalation_rate != null) {
      state.breaker = { state: "closed", ...state.breaker, escalation_rate: e.escalation_rate };
      touch("breaker");
    }
    touch("flood");
  },
  "queue.depths": (e) => {
    state.queues = e.queues || {};
    touch("agents");
  },
  snapshot: (e) => {
    if (e.series) state.series = e.series.slice(-SERIES_S);
    if (e.flood) state.flood = e.flood;
    if (e.queues) state.queues = e.queues.queues || {};
    if (e.breaker && !state.breaker) handlers["breaker.state"](e.breaker);
    touch("flood", "agents");
  },
};

// ---- feed ----------------------------------------------------------------------------------------
let source = null;
let buffered = [];   // events that arrive before the first REST snapshot is in
let loaded = false;

function onMessage(msg) {
  let e;
  try {
    e = JSON.parse(msg.data);
  } catch {
    return;
  }
  if (e.type !== "snapshot" && msg.lastEventId && e.id) {
    monitor.seen.push(e.id);
    if (monitor.seen.length > 50000) monitor.seen.splice(0, 10000);
    monitor.lastId = e.id;
  }
  state.evCount++;
  if (!loaded) buffered.push(e);
  else (handlers[e.type] || (() => {}))(e);
}

function connect() {
  // a fresh EventSource sends no Last-Event-ID header, so a manual reconnect passes it in the query
  const url = monitor.lastId ? `/v1/events?last_event_id=${encodeURIComponent(monitor.lastId)}` : "/v1/events";
  source = new EventSource(url);
  source.onopen = () => {
    monitor.connects++;
    setConn("live");
  };
  source.onmessage = onMessage;
  source.onerror = () => {
    // CONNECTING: the browser retries by itself with Last-Event-ID; CLOSED (e.g. an HTTP error): we do
    if (source.readyState === EventSource.CLOSED) {
      setConn("down");
      setTimeout(connect, 2000);
    } else setConn("connecting");
  };
}

function setConn(s) {
  const el = $("conn");
  el.dataset.state = s;
  el.textContent = s === "live" ? "live" : s === "down" ? "disconnected" : "reconnecting";
}

async function getJSON(url, opts) {
  const r = await fetch(url, { credentials: "same-origin", ...opts });
  if (r.status === 401) {
    location.href = "/login";
    throw new Error("unauthorized");
  }
  if (!r.ok) {
    // the API's JSON error names the problem: show that, not only the status
    const body = await r.json().catch(() => null);
    throw new Error(body?.error?.message || `${url}: HTTP ${r.status}`);
  }
  return r.json();
}

const debounce = (fn, ms) => {
  let t = null;
  return () => {
    if (t) return;
    t = setTimeout(() => {
      t = null;
      fn().catch(() => {});
    }, ms);
  };
};

const refreshAgents = debounce(async () => {
  const body = await getJSON("/v1/agents");
  for (const a of body.agents) state.agents.set(a.id, a);
  touch("agents");
}, 300);

const refreshIncidents = debounce(async () => {
  const body = await getJSON("/v1/incidents?limit=50");
  for (const inc of body.incidents) {
    if (inc.status === "resolved") {
      state.incidents.delete(inc.incident_id);
      continue;
    }
    const cur = state.incidents.get(inc.incident_id) || { hits: [] };
    state.incidents.set(inc.incident_id, { ...inc, hits: cur.hits, size: Math.max(inc.size, cur.size || 0) });
  }
  touch("incidents");
}, 500);

async function load() {
  const [tickets, incidents, agents] = await Promise.all([
    getJSON("/v1/tickets?limit=100"), getJSON("/v1/incidents?limit=50"), getJSON("/v1/agents")]);
  for (const rec of tickets.tickets.reverse()) {
    const t = ticket(rec.ticket_id, rec.timings?.received_at);
    Object.assign(t, {
      status: rec.status, category: rec.category, team: rec.team, urgency: rec.urgency,
      confidence: rec.enrich?.confidence, decided_by: rec.enrich?.decided_by, group: rec.group,
      incident: rec.incident, assignee: rec.assignee,
    });
  }
  for (const inc of incidents.incidents) if (inc.status !== "resolved") state.incidents.set(inc.incident_id, { ...inc, hits: [] });
  for (const a of agents.agents) state.agents.set(a.id, a);
  loaded = true;
  for (const e of buffered) (handlers[e.type] || (() => {}))(e);
  buffered = [];
  touch("incidents", "agents", "flood", "breaker");
}

// ---- rendering (once per frame) ------------------------------------------------------------------
function rowHTML(t) {
  const u = t.urgency == null ? "" : `<span class="urg ${t.urgency > 0.8 ? "hi" : t.urgency > 0.5 ? "mid" : ""}" style="width:${Math.round(t.urgency * 40)}px"></span>${t.urgency.toFixed(2)}`;
  const inc = t.incident ? `<span class="badge" title="${esc(t.group)}">${esc(String(t.group).slice(0, 8))}</span>` : "";
  return `<td>${hhmmss(t.ts)}</td><td title="${esc(t.id)}">${esc(t.id.slice(0, 10))}</td><td class="st-${esc(t.status)}">${esc(t.status)}</td>` +
    `<td>${esc(t.category || "")}</td><td>${t.confidence == null ? "" : (+t.confidence).toFixed(2)}</td><td>${u}</td>` +
    `<td>${inc}</td><td>${esc(t.assignee || (t.status === "queued" ? `(${t.team} queue)` : ""))}</td><td class="opt">${esc(t.decided_by || "")}</td>`;
}

function renderRows() {
  const tbody = $("rows");
  for (const t of state.newRows) {
    if (t.el) continue;
    const tr = document.createElement("tr");
    tr.dataset.id = t.id;
    tr.className = loaded ? "fresh" : "";
    t.el = tr;
    tbody.insertBefore(tr, tbody.firstChild);
  }
  state.newRows = [];
  while (tbody.rows.length > MAX_ROWS) {
    const last = tbody.lastElementChild;
    const t = state.tickets.get(last.dataset.id);
    if (t) t.el = null;
    last.remove();
  }
  for (const t of state.dirtyRows) if (t.el) t.el.innerHTML = rowHTML(t);
  state.dirtyRows.clear();
  $("tcount").textContent = state.tickets.size;
}

function renderIncidents() {
  const now = Date.now();
  const open = [...state.incidents.values()].sort((a, b) => b.size - a.size);
  $("inc-count").textContent = open.length;
  $("inc-list").innerHTML = open.slice(0, 20).map((inc) => {
    inc.hits = inc.hits.filter((ts) => ts > now - 60000);
    return `<li data-gid="${esc(inc.incident_id)}"><div class="row"><b>${esc(inc.incident_id.slice(0, 12))}</b>
      <span>${inc.size} tickets · +${inc.hits.length}/min${inc.storm_ended_at ? ' <span class="badge calm" title="its storm has been calm for the quiet period; resolve it when the cause is fixed">storm over</span>' : ""}</span>
      <button data-members="${esc(inc.incident_id)}">Members</button>
      <button data-resolve="${esc(inc.incident_id)}">Resolve</button></div>
      <div class="sample" title="${esc(inc.sample)}">${esc(inc.sample || "")}</div>
      <div class="muted">${esc(inc.team || "")}${inc.assignee ? " · " + esc(inc.assignee) : ""}</div></li>`;
  }).join("");
}

function renderFlood() {
  const f = state.flood;
  const el = $("flood-state");
  el.dataset.state = f?.state || "normal";
  el.textContent = (f?.state || "normal").toUpperCase();
  drawSeries($("flood-chart"), state.series.map((p) => p[1]), {
    color: f?.state === "flood" ? "#f85149" : "#58a6ff", fill: f?.state === "flood" ? "#f8514933" : "#58a6ff33",
    line: f?.threshold, lineColor: "#d2992288", label: `tickets/s · last ${state.series.length} s · dashed: flood threshold`,
  });
  $("flood-nums").textContent = f ? `${f.rate}/s now · baseline ${f.baseline}/s · flood above ${f.threshold}/s` : "–";
  $("clusters").innerHTML = (f?.clusters || []).map((c) => `<li class="row"><span class="sample" title="${esc(c.sample)}">${esc(c.sample)}</span>
    <span class="nowrap">+${c.last_60s} · ${c.size}${c.incident ? ' <span class="badge">incident</span>' : ""}</span></li>`).join("")
    || '<li class="muted">no growing clusters</li>';
}

function renderBreaker() {
  const b = state.breaker;
  const el = $("brk-state");
  if (!b) return drawSeries($("brk-chart"), [], { label: "latency ms" });
  el.dataset.state = b.state;
  el.textContent = String(b.state).replace("_", "-").toUpperCase();
  drawSeries($("brk-chart"), state.latency, { line: +b.budget_ms || 0, color: "#d2a8ff", label: "latency ms vs budget" });
  const esc_rate = b.escalation_rate == null ? "–" : `${(100 * b.escalation_rate).toFixed(1)}%`;
  $("brk-nums").innerHTML = `latency <b>${esc(b.latency_ms ?? "–")} ms</b> / budget ${esc(b.budget_ms ?? "–")} ms · ` +
    `escalation <b>${esc_rate}</b>${b.reason ? ` · ${esc(b.reason)}` : ""} · ${hhmmss(b.ts || Date.now())}`;
}

function renderAgents() {
  $("agent-list").innerHTML = [...state.agents.values()].map((a) => {
    const pct = a.capacity ? Math.min(100, (100 * a.load) / a.capacity) : 100;
    return `<li><div class="row"><span>${esc(a.name || a.id)}${a.active ? "" : ' <span class="muted">(inactive)</span>'}</span>
      <span>${a.load}/${a.capacity}</span></div>
      <div class="bar"><i class="${pct >= 100 ? "full" : pct >= 70 ? "busy" : ""}" style="width:${pct}%"></i></div></li>`;
  }).join("");
  const q = Object.entries(state.queues);
  $("queue-list").innerHTML = q.length ? q.map(([t, n]) => `<li>${esc(t)} <b>${n}</b></li>`).join("") : '<li class="muted">empty</li>';
}

const renderers = { rows: renderRows, incidents: renderIncidents, flood: renderFlood, breaker: renderBreaker, agents: renderAgents };

function render() {
  touch.pending = false;
  const panels = [...state.dirty];
  state.dirty.clear();
  for (const p of panels) renderers[p]();
}

// ---- interaction ---------------------------------------------------------------------------------
async function showTrail(id) {
  const rec = await getJSON(`/v1/tickets/${encodeURIComponent(id)}`);
  $("trail-title").textContent = `Ticket ${rec.ticket_id}`;
  const dl = (obj) => `<dl>${Object.entries(obj || {}).map(([k, v]) =>
    `<dt>${esc(k)}</dt><dd>${esc(typeof v === "object" && v !== null ? JSON.stringify(v) : v)}</dd>`).join("")}</dl>`;
  $("trail-body").innerHTML =
    `<h3>Ticket</h3>${dl({ status: rec.status, subject: rec.subject, customer: rec.customer, channel: rec.channel })}` +
    `<p>${esc(rec.body)}</p>` +
    `<h3>Enrich (classifier, urgency)</h3>${dl(rec.enrich)}` +
    `<h3>Dedup (group, incident)</h3>${dl(rec.dedup)}` +
    `<h3>Route</h3>${dl(rec.route)}` +
    `<h3>Timings</h3>${dl({ ...rec.timings, ms: undefined })}${dl(rec.timings?.ms)}` +
    (rec.dead_reason ? `<h3>Dead letter</h3><pre>${esc(rec.dead_reason)}</pre>` : "");
  $("trail").hidden = false;
}

// an incident's members, to split off, move out or merge it (POST /v1/incidents/{id}/split|move-out|merge)
async function showIncident(gid) {
  const inc = await getJSON(`/v1/incidents/${encodeURIComponent(gid)}`);
  const others = [...state.incidents.keys()].filter((g) => g !== gid);
  $("trail-title").textContent = `Incident ${inc.incident_id}`;
  const members = inc.members.slice(0, 500);
  $("trail-body").innerHTML =
    `<dl><dt>status</dt><dd>${esc(inc.status)}</dd><dt>size</dt><dd>${inc.size}</dd>` +
    `<dt>assignee</dt><dd>${esc(inc.assignee || "–")}</dd>` +
    (inc.reopen_count ? `<dt>re-opened</dt><dd>${inc.reopen_count}× · ${esc(inc.reopen_reason || "")}</dd>` : "") +
    `</dl><form id="regroup" data-gid="${esc(gid)}">` +
    `<h3>Members ${inc.members.length > members.length ? `(first ${members.length})` : ""}</h3>` +
    `<ul class="list members">${members.map((m) =>
      `<li><label><input type="checkbox" name="t" value="${esc(m)}"> ${esc(m)}</label></li>`).join("")}</ul>` +
    `<div class="row"><button type="button" data-op="split">Split checked off as a new incident</button>` +
    `<button type="button" data-op="move-out">Move checked out</button></div>` +
    (others.length ? `<div class="row"><select name="into">${others.map((g) =>
      `<option value="${esc(g)}">${esc(g)}</option>`).join("")}</select>` +
      `<button type="button" data-op="merge">Merge this incident into it</button></div>` : "") +
    `<p id="regroup-msg" class="muted" role="status"></p></form>`;
  $("trail").hidden = false;
}

async function regroup(ev) {
  const op = ev.target.dataset?.op;
  const form = ev.target.closest("form#regroup");
  if (!op || !form) return;
  const gid = form.dataset.gid;
  const ids = [...form.querySelectorAll('input[name="t"]:checked')].map((x) => x.value);
  const body = op === "merge" ? { into: form.querySelector('select[name="into"]').value } : { ticket_ids: ids };
  const msg = $("regroup-msg");
  ev.target.disabled = true;
  try {
    const res = await getJSON(`/v1/incidents/${encodeURIComponent(gid)}/${op}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    msg.textContent = `${res.kind}: moved ${res.moved} to ${res.target}` + (res.queued.length ? `, ${res.queued.length} queued` : "");
    refreshIncidents();
    if (op === "merge") state.incidents.delete(gid);
    else await showIncident(gid);
    $("regroup-msg").textContent = msg.textContent;
  } catch (e) {
    msg.textContent = e.message;
    ev.target.disabled = false;
  }
}

function wire() {
  $("rows").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr");
    if (tr) showTrail(tr.dataset.id).catch((e) => console.warn(e));
  });
  $("trail-close").addEventListener("click", () => ($("trail").hidden = true));
  $("trail-body").addEventListener("click", (ev) => regroup(ev).catch((e) => console.warn(e)));
  $("inc-list").addEventListener("click", async (ev) => {
    if (ev.target.dataset?.members) {
      showIncident(ev.target.dataset.members).catch((e) => console.warn(e));
      return;
    }
    const gid = ev.target.dataset?.resolve;
    if (!gid) return;
    ev.target.disabled = true;
    try {
      await getJSON(`/v1/incidents/${encodeURIComponent(gid)}/resolve`, { method: "POST" });
      state.incidents.delete(gid);
      touch("incidents");
    } catch (e) {
      ev.target.disabled = false;
      console.warn(e);
    }
  });
  setInterval(() => {
    $("evrate").textContent = state.evCount;
    state.evCount = 0;
    touch("incidents");
  }, 1000);
  window.addEventListener("resize", () => touch("flood", "breaker"));
}

wire();
connect();
load().catch((e) => console.warn("initial load failed", e));
