// chatstate dashboard: sessions, one session, analytics and the web chat.
// Plain JavaScript, no dependencies. Every piece of session data is inserted as text (never as
// HTML), because it comes from users.
"use strict";

const state = { info: null, key: localStorage.getItem("chatstate.key") || "", flows: [] };
const SVG = "http://www.w3.org/2000/svg";

// -- helpers --------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.setAttribute("class", value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
const s = (tag, attrs, ...children) => h("svg:" + tag, attrs, ...children);

function toast(message, error) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = "toast" + (error ? " error" : "");
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, error ? 6000 : 2500);
}

function headers(extra) {
  const out = Object.assign({ "Accept": "application/json" }, extra || {});
  if (state.key) out["Authorization"] = "Bearer " + state.key;
  return out;
}

async function api(method, path, body, extraHeaders) {
  const init = { method, headers: headers(extraHeaders), credentials: "same-origin" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 401) askKey();
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = (data && data.detail) || response.statusText;
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return data;
}

function ago(ts) {
  if (!ts) return "–";
  const d = Date.now() / 1000 - ts;
  if (d < 5) return "just now";
  if (d < 60) return Math.round(d) + " s ago";
  if (d < 3600) return Math.round(d / 60) + " min ago";
  if (d < 86400) return Math.round(d / 3600) + " h ago";
  return new Date(ts * 1000).toLocaleDateString();
}
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return Math.round(seconds) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}
function when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : "–"; }
function badge(status) { return h("span", { class: "badge " + status }, status); }
function text(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => p.text || JSON.stringify(p)).join(" ");
  return JSON.stringify(content);
}
function json(value) { return JSON.stringify(value, null, 2); }

// -- API key ----------------------------------------------------------------------------------

function askKey() {
  const dialog = document.getElementById("key-dialog");
  if (!dialog.open) dialog.showModal();
}
function setupKeyDialog() {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-button").addEventListener("click", askKey);
  document.getElementById("key-form").addEventListener("submit", () => {
    state.key = document.getElementById("key-input").value.trim();
    localStorage.setItem("chatstate.key", state.key);
    route();
    startLive();
  });
  document.getElementById("key-clear").addEventListener("click", () => {
    state.key = "";
    localStorage.removeItem("chatstate.key");
    dialog.close();
    route();
  });
}

// -- live events (server-sent events read with fetch, so the key travels in a header) --------

const listeners = new Set();
let liveAbort = null;
async function startLive() {
  if (liveAbort) liveAbort.abort();
  liveAbort = new AbortController();
  const pill = document.getElementById("live");
  try {
    const response = await fetch("/v1/events", { headers: headers({ Accept: "text/event-stream" }), signal: liveAbort.signal });
    if (!response.ok) throw new Error(response.statusText);
    pill.textContent = "live";
    pill.className = "pill on";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const line = chunk.split("\n").find((l) => l.startsWith("data: "));
        if (line) {
          const event = JSON.parse(line.slice(6));
          listeners.forEach((fn) => fn(event));
        }
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return;
  }
  pill.textContent = "offline";
  pill.className = "pill";
  setTimeout(startLive, 5000);
}

// -- router -------------------------------------------------------------------------------------

let cleanup = [];
function route() {
  cleanup.forEach((fn) => fn());
  cleanup = [];
  const hash = location.hash || "#/sessions";
  const [, page, arg] = hash.split("/");
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === (page === "s" ? "sessions" : page)));
  const view = document.getElementById("view");
  view.replaceChildren();
  if (page === "s" && arg) return sessionPage(view, decodeURIComponent(arg));
  if (page === "analytics") return analyticsPage(view);
  if (page === "chat") return chatPage(view);
  return sessionsPage(view);
}
function onLive(fn) { listeners.add(fn); cleanup.push(() => listeners.delete(fn)); }
function every(ms, fn) { const t = setInterval(fn, ms); cleanup.push(() => clearInterval(t)); }

// -- sessions list ------------------------------------------------------------------------------

function sessionsPage(view) {
  const filters = { status: "", platform: "", flow: "", q: "" };
  const saved = JSON.parse(sessionStorage.getItem("chatstate.filters") || "{}");
  Object.assign(filters, saved);
  let cursor = null;
  const body = h("tbody");
  const count = h("span", { class: "muted small" });
  const more = h("button", { type: "button", hidden: true, onclick: () => load(false) }, "Load more");
  const search = h("input", { type: "search", placeholder: "Search by key prefix, e.g. web:user:", value: filters.q, "aria-label": "search" });
  const status = h("select", { "aria-label": "status" },
    ["", "active", "closed", "expired"].map((v) => h("option", { value: v, selected: filters.status === v }, v || "any status")));
  const platform = h("input", { placeholder: "platform", value: filters.platform, size: 10, "aria-label": "platform" });
  const flow = h("input", { placeholder: "flow", value: filters.flow, size: 10, "aria-label": "flow" });

  function read() {
    filters.q = search.value.trim();
    filters.status = status.value;
    filters.platform = platform.value.trim();
    filters.flow = flow.value.trim();
    sessionStorage.setItem("chatstate.filters", JSON.stringify(filters));
  }
  async function load(reset) {
    const params = new URLSearchParams({ limit: "50" });
    for (const [k, v] of Object.entries(filters)) if (v) params.set(k, v);
    if (!reset && cursor) params.set("cursor", cursor);
    try {
      const page = await api("GET", "/v1/sessions?" + params);
      if (reset) body.replaceChildren();
      for (const item of page.items) body.append(row(item));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      count.textContent = body.children.length + (cursor ? "+" : "") + " sessions";
      if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No sessions match. Start one in the web chat, or wait for your bot's users.")));
    } catch (err) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "empty" }, err.message)));
    }
  }
  function row(item) {
    const flowText = item.flow ? item.flow.name + (item.flow.step ? " › " + item.flow.step : "") : "";
    return h("tr", { "data-id": item.id, onclick: () => { location.hash = "#/s/" + item.id; } },
      h("td", {}, h("a", { href: "#/s/" + item.id, class: "mono" }, item.key)),
      h("td", {}, badge(item.status)),
      h("td", {}, item.state || h("span", { class: "muted" }, "–")),
      h("td", {}, flowText || h("span", { class: "muted" }, "–")),
      h("td", { class: "num" }, item.counters.messages || 0),
      h("td", {}, ago(item.last_activity)),
      h("td", {}, item.status === "active" ? duration(item.remaining_seconds) : (item.close_reason || "–")),
      h("td", { class: "muted small mono" }, item.id.slice(0, 8)));
  }
  let timer = null;
  const refresh = () => { clearTimeout(timer); timer = setTimeout(() => load(true), 250); };
  for (const el of [status, platform, flow]) el.addEventListener("change", () => { read(); load(true); });
  search.addEventListener("input", () => { read(); refresh(); });

  view.append(
    h("div", { class: "section-title" }, h("h1", {}, "Sessions"), count),
    h("div", { class: "filters" }, search, status, platform, flow,
      h("span", { class: "spacer" }), h("button", { type: "button", onclick: () => load(true) }, "Refresh")),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Key", "Status", "State", "Flow › step", "Messages", "Last activity", "Expires in / reason", "Id"].map((t) => h("th", {}, t)))),
      body)),
    h("div", { class: "row", style: null }, more));
  load(true);
  onLive((event) => { if (event.name.startsWith("session.")) refresh(); });
  every(15000, () => load(true));
}

// -- one session ------------------------------------------------------------------------------

async function sessionPage(view, ref) {
  let record;
  try {
    record = await api("GET", "/v1/sessions/" + encodeURIComponent(ref));
  } catch (err) {
    view.append(h("p", {}, h("a", { href: "#/sessions" }, "← Sessions")), h("div", { class: "panel empty" }, err.message));
    return;
  }
  const active = record.status === "active";
  const actions = h("div", { class: "actions" });
  const formSlot = h("div");
  if (active && record.current) {
    actions.append(
      h("button", { type: "button", onclick: () => closeForm() }, "Close session"),
      h("button", { type: "button", onclick: () => moveForm(), disabled: !state.flows.length,
        title: state.flows.length ? "" : "no flows are registered on this server" }, "Move to step"));
  }
  actions.append(
    h("a", { href: "/v1/sessions/" + record.id + "/export", download: "" , class: "small", onclick: exportClick }, "Export"),
    h("button", { type: "button", class: "danger", onclick: remove }, "Delete"));

  function exportClick(e) {
    if (!state.key) return;
    e.preventDefault();
    fetch("/v1/sessions/" + record.id + "/export", { headers: headers() }).then((r) => r.blob()).then((blob) => {
      const a = h("a", { href: URL.createObjectURL(blob), download: "session-" + record.id + ".jsonl" });
      a.click();
    });
  }
  function closeForm() {
    const reason = h("input", { value: "operator", "aria-label": "reason" });
    formSlot.replaceChildren(h("form", { class: "inline-form", onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api("POST", "/v1/sessions/" + record.id + "/close", { reason: reason.value || "operator" }, { "If-Match": '"' + record.version + '"' });
        toast("Session closed");
        route();
      } catch (err) { toast(err.message, true); }
    } }, h("label", {}, "Reason", reason), h("button", { type: "submit", class: "primary" }, "Close it"),
      h("button", { type: "button", onclick: () => formSlot.replaceChildren() }, "Cancel")));
  }
  function moveForm() {
    const flowSel = h("select", { "aria-label": "flow" }, state.flows.map((f) => h("option", { value: f.name, selected: record.flow && record.flow.name === f.name }, f.title || f.name)));
    const stepSel = h("select", { "aria-label": "step" });
    const fill = () => {
      const f = state.flows.find((x) => x.name === flowSel.value);
      stepSel.replaceChildren(...(f ? f.steps : []).map((st) => h("option", { value: st, selected: record.flow && record.flow.step === st }, st)));
    };
    flowSel.addEventListener("change", fill);
    fill();
    formSlot.replaceChildren(h("form", { class: "inline-form", onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api("POST", "/v1/sessions/" + record.id + "/move", { flow: flowSel.value, step: stepSel.value }, { "If-Match": '"' + record.version + '"' });
        toast("Moved to " + stepSel.value);
        route();
      } catch (err) { toast(err.message, true); }
    } }, h("label", {}, "Flow", flowSel), h("label", {}, "Step", stepSel), h("button", { type: "submit", class: "primary" }, "Move"),
      h("button", { type: "button", onclick: () => formSlot.replaceChildren() }, "Cancel")));
  }
  async function remove() {
    if (!confirm("Delete this session and its history for good?")) return;
    try {
      await api("DELETE", "/v1/sessions/" + record.id);
      toast("Session deleted");
      location.hash = "#/sessions";
    } catch (err) { toast(err.message, true); }
  }

  const c = record.counters, u = record.usage;
  const history = h("div", { class: "history", id: "history" });
  const older = h("button", { type: "button", class: "small", hidden: true }, "Older messages");
  let before = null;
  async function loadHistory() {
    const params = new URLSearchParams({ limit: "50" });
    if (before) params.set("before_seq", before);
    const page = await api("GET", "/v1/sessions/" + record.id + "/messages?" + params);
    const nodes = page.items.map((m) => h("div", { class: "msg " + m.role }, text(m.content),
      h("div", { class: "meta" }, m.role + " · #" + m.seq + " · " + when(m.created_at) + (m.tokens ? " · " + m.tokens + " tokens" : ""))));
    history.prepend(...nodes);
    if (!before) history.scrollTop = history.scrollHeight;
    before = page.next_before_seq;
    older.hidden = !before;
    if (!history.children.length) history.append(h("p", { class: "muted" }, "No messages."));
  }
  older.addEventListener("click", loadHistory);

  const flowPanel = h("div", { class: "panel" }, h("h2", {}, "Flow position"));
  if (record.flow) {
    const f = record.flow;
    flowPanel.append(h("dl", { class: "kv" },
      h("dt", {}, "flow"), h("dd", {}, f.name + " v" + f.version),
      h("dt", {}, "step"), h("dd", {}, f.step || "–"),
      h("dt", {}, "back stack"), h("dd", {}, f.stack.length ? f.stack.join(" › ") : "–"),
      h("dt", {}, "failed attempts"), h("dd", {}, f.attempts),
      h("dt", {}, "entered"), h("dd", {}, when(f.entered_at))));
    const known = state.flows.find((x) => x.name === f.name);
    if (known) {
      flowPanel.append(h("div", { class: "diagram" }, flowDiagram(known, f.step)),
        h("details", {}, h("summary", { class: "small muted" }, "Mermaid source"), h("pre", {}, known.diagram)));
    }
  } else {
    flowPanel.append(h("p", { class: "muted" }, "Not inside a flow" + (record.state ? " (state: " + record.state + ")" : "") + "."));
  }

  view.append(
    h("p", {}, h("a", { href: "#/sessions" }, "← Sessions")),
    h("div", { class: "panel" },
      h("div", { class: "row" }, h("h1", { class: "mono" }, record.key), badge(record.status),
        record.current ? null : h("span", { class: "tag" }, "replaced"), h("span", { class: "spacer" }), actions),
      h("div", { class: "muted small mono" }, "id " + record.id + " · version " + record.version),
      formSlot),
    h("div", { class: "grid two", id: "session-grid" },
      h("div", { class: "panel" }, h("h2", {}, "State and data"),
        h("dl", { class: "kv" }, h("dt", {}, "state"), h("dd", {}, record.state || "–"),
          h("dt", {}, "labels"), h("dd", {}, Object.keys(record.labels).length ? Object.entries(record.labels).map(([k, v]) => h("span", { class: "tag" }, k + "=" + v)) : "–")),
        h("h2", { class: "small muted" }, ""), h("pre", { id: "session-data" }, json(record.data))),
      flowPanel,
      h("div", { class: "panel" }, h("h2", {}, "Lifetime"),
        h("dl", { class: "kv" },
          h("dt", {}, "created"), h("dd", {}, when(record.created_at)),
          h("dt", {}, "last activity"), h("dd", {}, when(record.last_activity) + " (" + ago(record.last_activity) + ")"),
          h("dt", {}, "expires"), h("dd", {}, record.expires_at ? when(record.expires_at) + " (in " + duration(record.remaining_seconds) + ")" : "–"),
          h("dt", {}, "warning at"), h("dd", {}, when(record.warn_at)),
          h("dt", {}, "closed"), h("dd", {}, record.closed_at ? when(record.closed_at) + " – " + (record.close_reason || "") : "–"),
          h("dt", {}, "purge at"), h("dd", {}, when(record.purge_at)),
          h("dt", {}, "last error"), h("dd", {}, record.last_error || "–"))),
      h("div", { class: "panel" }, h("h2", {}, "Usage"),
        h("div", { class: "grid cards" },
          stat("messages", c.messages || 0), stat("history", c.last_seq || 0), stat("tool calls", c.tool_calls || 0),
          stat("errors", c.errors || 0), stat("input tokens", u.input_tokens || 0), stat("output tokens", u.output_tokens || 0),
          stat("model calls", u.model_calls || 0)))),
    h("div", { class: "panel", id: "history-panel" }, h("div", { class: "row" }, h("h2", {}, "History"), h("span", { class: "spacer" }), older), history));
  view.querySelector("#session-grid").style.marginTop = "16px";
  view.querySelector("#history-panel").style.marginTop = "16px";
  try { await loadHistory(); } catch (err) { history.append(h("p", { class: "muted" }, err.message)); }
  onLive((event) => { if (event.session_id === record.id && event.name === "session.committed") toast("This session changed – reload to see it"); });
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));
}

// A small layered drawing of a flow: steps by distance from the first step, edges as curves.
function flowDiagram(flow, current) {
  const depth = { [flow.initial]: 0 };
  const queue = [flow.initial];
  while (queue.length) {
    const at = queue.shift();
    for (const e of flow.edges) if (e.source === at && e.target && !(e.target in depth)) { depth[e.target] = depth[at] + 1; queue.push(e.target); }
  }
  let maxDepth = Math.max(0, ...Object.values(depth));
  for (const step of flow.steps) if (!(step in depth)) depth[step] = ++maxDepth;
  const columns = {};
  for (const step of flow.steps) (columns[depth[step]] = columns[depth[step]] || []).push(step);
  const W = 130, H = 34, GX = 50, GY = 22;
  const pos = {};
  let rows = 0;
  Object.entries(columns).forEach(([d, steps]) => { steps.forEach((st, i) => { pos[st] = { x: 10 + d * (W + GX), y: 10 + i * (H + GY) }; }); rows = Math.max(rows, steps.length); });
  const width = 20 + (maxDepth + 1) * (W + GX), height = 20 + rows * (H + GY);
  const svg = s("svg", { class: "flow", viewBox: `0 0 ${width} ${height}`, width: Math.min(width, 900), role: "img", "aria-label": "flow diagram of " + flow.name });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9ca3af" }))));
  for (const e of flow.edges) {
    const a = pos[e.source], b = e.target ? pos[e.target] : null;
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const back = x2 <= a.x;
    const d = back ? `M${a.x + W / 2},${a.y + H} C${a.x + W / 2},${a.y + H + 30} ${b.x + W / 2},${b.y + H + 30} ${b.x + W / 2},${b.y + H}`
      : `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`;
    svg.append(s("path", { d, "marker-end": "url(#arrow)" }));
  }
  for (const st of flow.steps) {
    const p = pos[st], cur = st === current;
    svg.append(s("rect", { x: p.x, y: p.y, width: W, height: H, rx: 8, class: cur ? "current" : "" }),
      s("text", { x: p.x + W / 2, y: p.y + H / 2 + 4, "text-anchor": "middle", class: cur ? "current" : "" }, st.length > 18 ? st.slice(0, 17) + "…" : st));
  }
  return svg;
}

// -- analytics --------------------------------------------------------------------------------

async function analyticsPage(view) {
  view.append(h("div", { class: "section-title" }, h("h1", {}, "Analytics"), h("span", { class: "muted small" }, "computed by the store")));
  const holder = h("div");
  view.append(holder);
  async function load() {
    let a;
    try { a = await api("GET", "/v1/analytics"); } catch (err) { holder.replaceChildren(h("div", { class: "panel empty" }, err.message)); return; }
    const t = a.totals;
    holder.replaceChildren(
      h("div", { class: "grid cards" },
        panelStat("sessions", t.sessions), panelStat("active now", t.active), panelStat("closed", t.closed),
        panelStat("expired", t.expired), panelStat("messages", a.messages), panelStat("tokens", a.tokens),
        panelStat("average length", duration(a.avg_session_seconds))),
      spacer(),
      h("div", { class: "grid two" },
        h("div", { class: "panel" }, h("h2", {}, "Active sessions, last 24 h"), lineChart(a.active_series)),
        h("div", { class: "panel" }, h("h2", {}, "Flow funnel"), funnelChart(a.funnel)),
        h("div", { class: "panel" }, h("h2", {}, "Close reasons"), barChart(a.close_reasons)),
        h("div", { class: "panel" }, h("h2", {}, "By platform"), barChart(a.by_platform)),
        h("div", { class: "panel" }, h("h2", {}, "By user type"), barChart(a.by_user_type)),
        h("div", { class: "panel" }, h("h2", {}, "Top intents"), barChart(Object.fromEntries(a.top_intents.map((i) => [i.intent, i.sessions]))))));
  }
  await load();
  every(30000, load);
}
function spacer() { const d = h("div"); d.style.height = "16px"; return d; }
function panelStat(label, value) { return h("div", { class: "panel stat" }, h("div", { class: "value" }, value), h("div", { class: "label" }, label)); }

function lineChart(points) {
  if (!points.length) return h("p", { class: "muted" }, "No samples yet: the server samples active sessions every minute.");
  const W = 520, H = 180, L = 36, B = 22;
  const maxV = Math.max(1, ...points.map((p) => p.active));
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
  const x = (t) => L + (W - L - 8) * (t - t0) / (t1 - t0);
  const y = (v) => H - B - (H - B - 10) * v / maxV;
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "active sessions over time" });
  for (const v of [...new Set([0, Math.round(maxV / 2), maxV])]) {
    svg.append(s("line", { x1: L, x2: W - 8, y1: y(v), y2: y(v), class: "axis" }), s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, Math.round(v)));
  }
  const path = points.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + "," + y(p.active).toFixed(1)).join(" ");
  svg.append(s("path", { d: path + ` L${x(t1)},${y(0)} L${x(t0)},${y(0)} z`, class: "area" }), s("path", { d: path, class: "line" }));
  if (points.length === 1) svg.append(s("circle", { cx: x(t0), cy: y(points[0].active), r: 4, fill: "#4f46e5" }));
  const fmt = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  svg.append(s("text", { x: L, y: H - 4 }, fmt(t0)), s("text", { x: W - 8, y: H - 4, "text-anchor": "end" }, fmt(t1)));
  return svg;
}

function barChart(mapping) {
  const entries = Object.entries(mapping || {}).sort((a, b) => b[1] - a[1]).slice(0, 10);
  if (!entries.length) return h("p", { class: "muted" }, "Nothing yet.");
  const W = 520, row = 26, L = 140;
  const maxV = Math.max(...entries.map((e) => e[1]));
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${entries.length * row + 4}`, role: "img" });
  entries.forEach(([name, value], i) => {
    const w = (W - L - 50) * value / maxV;
    svg.append(s("text", { x: L - 8, y: i * row + 17, "text-anchor": "end", class: "label" }, name.length > 20 ? name.slice(0, 19) + "…" : name),
      s("rect", { x: L, y: i * row + 5, width: Math.max(2, w), height: 16, rx: 4, class: "bar" }),
      s("text", { x: L + w + 6, y: i * row + 17 }, value));
  });
  return svg;
}

function funnelChart(rows) {
  if (!rows.length) return h("p", { class: "muted" }, "No flow activity recorded yet.");
  const kinds = ["entered", "completed", "abandoned", "timed_out"];
  const W = 520, row = 30, L = 170;
  const maxV = Math.max(1, ...rows.map((r) => Math.max(r.entered, r.completed + r.abandoned + r.timed_out, r.active)));
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${rows.length * row + 4}`, role: "img", "aria-label": "flow funnel" });
  rows.forEach((r, i) => {
    const label = r.flow + " › " + r.step;
    svg.append(s("text", { x: L - 8, y: i * row + 19, "text-anchor": "end", class: "label" }, label.length > 24 ? label.slice(0, 23) + "…" : label));
    const scale = (W - L - 60) / maxV;
    svg.append(s("rect", { x: L, y: i * row + 4, width: Math.max(2, r.entered * scale), height: 9, rx: 3, class: "bar" }));
    let x = L;
    for (const k of kinds.slice(1)) {
      if (!r[k]) continue;
      svg.append(s("rect", { x, y: i * row + 15, width: r[k] * scale, height: 9, rx: 3, class: "bar " + k }));
      x += r[k] * scale;
    }
    svg.append(s("text", { x: L + Math.max(r.entered * scale, x - L) + 6, y: i * row + 19 }, r.entered + " in" + (r.active ? " · " + r.active + " here now" : "")));
  });
  const legend = h("div", { class: "legend" }, kinds.map((k) => h("span", {}, h("i", { class: k }), k.replace("_", " "))));
  return h("div", {}, svg, legend);
}

// -- web chat ---------------------------------------------------------------------------------

function chatPage(view) {
  const history = h("div", { class: "history", id: "chat-history" });
  const input = h("input", { id: "chat-input", placeholder: "Type a message… (/help, /whoami, /reset)", autocomplete: "off", maxlength: 4000, "aria-label": "message" });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const info = h("dl", { class: "kv", id: "chat-info" });
  let session = null, countdown = null;

  function bubble(role, content, buttons) {
    const node = h("div", { class: "msg " + role }, content);
    history.append(node);
    if (buttons && buttons.length) {
      history.append(h("div", { class: "buttons" }, buttons.flat().map((b) => h("button", { type: "button", class: "small", onclick: () => submit(b.text, b.payload) }, b.text))));
    }
    history.scrollTop = history.scrollHeight;
  }
  function showInfo() {
    if (!session) return;
    info.replaceChildren(
      h("dt", {}, "session"), h("dd", {}, h("a", { href: "#/s/" + session.session_id, class: "mono" }, session.session_id.slice(0, 12))),
      h("dt", {}, "status"), h("dd", {}, badge(session.status)),
      h("dt", {}, "state"), h("dd", {}, session.state || "–"),
      h("dt", {}, "messages"), h("dd", {}, session.message_count),
      h("dt", {}, "time left"), h("dd", { id: "chat-remaining" }, session.expires_at ? duration(Math.max(0, session.expires_at - Date.now() / 1000)) : "–"));
  }
  async function submit(message, payload) {
    if (!message) return;
    bubble("user", message);
    input.value = "";
    send.disabled = true;
    const typing = h("div", { class: "typing" }, "bot is typing…");
    history.append(typing);
    try {
      const body = { message };
      if (payload) body.payload = payload;
      const reply = await api("POST", "/v1/chat", body, state.info && !state.info.chat_public ? {} : {});
      typing.remove();
      for (const r of reply.replies) bubble("assistant", r.text, r.buttons);
      session = reply.session;
      showInfo();
      if (!liveChat) startChatEvents();
    } catch (err) {
      typing.remove();
      bubble("notice", err.message);
    } finally {
      send.disabled = false;
      input.focus();
    }
  }
  let liveChat = null;
  async function startChatEvents() {
    liveChat = new AbortController();
    cleanup.push(() => liveChat && liveChat.abort());
    try {
      const response = await fetch("/v1/chat/events", { headers: headers({ Accept: "text/event-stream" }), signal: liveChat.signal, credentials: "same-origin" });
      if (!response.ok) { liveChat = null; return; }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const chunk = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const line = chunk.split("\n").find((l) => l.startsWith("data: "));
          if (!line) continue;
          const event = JSON.parse(line.slice(6));
          if (event.name === "timeout.warned") bubble("notice", "Your session will end soon: say something to keep it.");
          if (event.name === "session.expired") { bubble("notice", "Your session expired. The next message starts a new one."); if (session) { session.status = "expired"; showInfo(); } }
          if (event.name === "session.closed" && event.data.reason !== "timeout") { bubble("notice", "Your session was closed (" + (event.data.reason || "closed") + ")."); if (session) { session.status = "closed"; showInfo(); } }
        }
      }
    } catch (err) { /* aborted or connection lost */ }
    liveChat = null;
  }
  countdown = setInterval(() => {
    const el = document.getElementById("chat-remaining");
    if (el && session && session.expires_at && session.status === "active") el.textContent = duration(Math.max(0, session.expires_at - Date.now() / 1000));
  }, 1000);
  cleanup.push(() => clearInterval(countdown));

  view.append(
    h("div", { class: "section-title" }, h("h1", {}, "Web chat"), h("span", { class: "muted small" }, "talking to the " + ((state.info && state.info.bot) || "configured") + " bot")),
    h("div", { class: "chat" },
      h("div", { class: "panel chat-window" }, history,
        h("form", { class: "chat-form", id: "chat-form", onsubmit: (e) => { e.preventDefault(); submit(input.value.trim()); } }, input, send)),
      h("div", { class: "panel" }, h("h2", {}, "Your session"), info,
        h("p", { class: "muted small" }, "Your browser keeps an anonymous user id in a cookie, so the conversation continues after a reload."))));
  bubble("notice", "Say hello to start a session.");
  input.focus();
}

// -- start ------------------------------------------------------------------------------------

async function start() {
  setupKeyDialog();
  try {
    state.info = await api("GET", "/v1/info");
    document.getElementById("server-info").textContent = state.info.store.replace("Store", "") + (state.info.auth === "open-local" ? " · local, no key" : "");
    if (state.info.auth === "open-local") document.getElementById("key-button").hidden = true;
    else if (!state.key) askKey();
  } catch (err) { toast(err.message, true); }
  try { state.flows = (await api("GET", "/v1/flows")).items; } catch (err) { state.flows = []; }
  window.addEventListener("hashchange", route);
  route();
  startLive();
}
document.addEventListener("DOMContentLoaded", start);
