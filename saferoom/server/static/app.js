// The gateway's web page. Every value from the gateway is written as text (textContent), never as markup;
// the page's Content-Security-Policy lets it run only the gateway's own scripts and talk only to the gateway.
"use strict";

const $ = id => document.getElementById(id);
const PAGE = 100;        // rows a page of the result shows
const CHART_ROWS = 1000; // rows a chart draws at most (the gateway's largest page)
const BARS = 60;         // bars a bar chart draws at most
let token = sessionStorage.getItem("saferoom-token") || "";
let role = sessionStorage.getItem("saferoom-role") || "";
let editor = null;
let current = null;      // the result on show: {id, rows, columns, kinds, offset}
let explainTimer = 0, explainSeq = 0;

// -- talking to the gateway -------------------------------------------------------------------------------
async function call(path, options = {}) {
  const response = await fetch(path, {...options, headers: {...(options.headers || {}), Authorization: "Bearer " + token}});
  const body = await response.json().catch(() => null);
  if (body === null) throw new Error("the gateway's answer could not be read (" + response.status + " " + response.statusText + ")");
  if (!response.ok) {
    const error = new Error(body.error ? body.error.message : response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

const withRole = path => role ? path + (path.includes("?") ? "&" : "?") + "role=" + encodeURIComponent(role) : path;
const post = (path, body) => call(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify({...body, role: role || null})});

// -- small builders -----------------------------------------------------------------------------------------
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function plural(n, word) {
  return n.toLocaleString("en") + " " + word + (n === 1 ? "" : "s");
}

function table(columns, rows, kinds = []) {
  const t = el("table");
  const head = t.createTHead().insertRow();
  columns.forEach((c, i) => head.appendChild(el("th", c, kinds[i] === "time" ? "nowrap" : "")));
  const body = t.createTBody();
  rows.forEach(r => {
    const tr = body.insertRow();
    r.forEach((v, i) => tr.appendChild(v === null || v === undefined ? el("td", "NULL", "null")
      : el("td", v, kinds[i] === "number" ? "num" : kinds[i] === "time" ? "nowrap" : "")));
  });
  return t;
}

// -- signing in and out -------------------------------------------------------------------------------------
async function signIn() {
  try {
    const me = await call(withRole("/v1/whoami"));
    role = me.role;
    sessionStorage.setItem("saferoom-role", role);
    $("who").textContent = me.user + " (role " + me.role + ")";
    $("signin-error").textContent = "";
    showRoles(me.roles, me.role);
    $("signin-view").classList.add("hidden");
    $("app").classList.remove("hidden");
    $("signout").classList.remove("hidden");
    $("audit-section").classList.toggle("hidden", !me.audit);
    startEditor();
    await showCatalog();
    await loadRequests();  // requests.js
  } catch (e) {
    signedOut("Sign-in failed: " + e.message);
  }
}

function showRoles(roles, active) {
  const box = $("role");
  box.replaceChildren(...roles.map(r => { const o = el("option", r); o.value = r; o.selected = r === active; return o; }));
  $("role-box").classList.toggle("hidden", roles.length < 2);
}

async function signOut() {
  try { await call("/v1/results", {method: "DELETE"}); } catch (e) { /* the token may be gone already */ }
  token = role = "";
  sessionStorage.removeItem("saferoom-token");
  sessionStorage.removeItem("saferoom-role");
  signedOut("");
}

function signedOut(message) {
  $("app").classList.add("hidden");
  $("signout").classList.add("hidden");
  $("role-box").classList.add("hidden");
  $("who").textContent = "";
  $("signin-view").classList.remove("hidden");
  $("signin-error").textContent = message;
  $("token").value = "";
  ["catalog", "result", "decision", "notices", "audit", "chart", "explain"].forEach(id => $(id).replaceChildren());
  $("error").textContent = "";
  $("output").classList.add("hidden");
  current = null;
  forgetRequests();  // requests.js
}

// -- the catalog --------------------------------------------------------------------------------------------
async function showCatalog() {
  const catalog = await call(withRole("/v1/tables"));
  const schema = {};
  $("catalog").replaceChildren(...catalog.map(t => {
    schema[t.name] = t.columns.filter(c => c.action !== "deny").map(c => c.name);
    return catalogTable(t);
  }));
  editor.setSchema(schema);
  filterCatalog();
}

function catalogTable(t) {
  const box = el("div", null, "catalog-table");
  box.dataset.name = t.name.toLowerCase();
  const title = el("h3", t.name);
  title.title = "insert into the query";
  title.addEventListener("click", () => insert(t.name));
  const tab = table(["column", "you get", "why"], t.columns.map(c => [c.name, c.action, c.reason]));
  [...tab.tBodies[0].rows].forEach((tr, i) => {
    const column = t.columns[i];
    tr.dataset.name = column.name.toLowerCase();
    if (column.action === "deny") tr.className = "deny";
    else tr.cells[0].addEventListener("click", () => insert(column.name));
  });
  box.append(title, tab);
  if (t.row_filter) box.appendChild(el("p", "rows filtered: " + t.row_filter, "muted"));
  return box;
}

function filterCatalog() {
  const words = $("catalog-search").value.toLowerCase().split(/\s+/).filter(Boolean);
  const matches = text => words.every(w => text.includes(w));
  let shown = 0;
  document.querySelectorAll(".catalog-table").forEach(box => {
    const whole = matches(box.dataset.name);  // the table's name matches: all of its columns show
    let hits = 0;
    box.querySelectorAll("tbody tr").forEach(tr => {
      const hit = whole || matches(box.dataset.name + " " + tr.dataset.name);
      tr.classList.toggle("hidden", !hit);
      hits += hit ? 1 : 0;
    });
    box.classList.toggle("hidden", hits === 0 && !whole);
    shown += hits || whole ? 1 : 0;
  });
  $("catalog-empty").classList.toggle("hidden", shown > 0);
}

function insert(text) {
  const view = editor.view;
  const {from, to} = view.state.selection.main;
  view.dispatch({changes: {from, to, insert: text}, selection: {anchor: from + text.length}});
  view.focus();
}

// -- the editor and the explain panel -----------------------------------------------------------------------
function startEditor() {
  if (editor) return;
  editor = SaferoomEditor.create($("editor"), {doc: "select 1", onRun: run, onChange: explainSoon});
  explainSoon();
}

function explainSoon() {
  clearTimeout(explainTimer);
  explainTimer = setTimeout(explain, 400);
}

async function explain() {
  const sql = editor.value.trim();
  const seq = ++explainSeq;
  if (!sql) { $("explain").replaceChildren(el("p", "Type a query.", "muted")); return; }
  let view;
  try {
    view = decisionView(await post("/v1/explain", {sql}), false);
  } catch (e) {  // a query still being typed does not parse yet: said quietly, a refusal is said in red
    view = el("p", e.message, "muted");
  }
  if (seq === explainSeq) $("explain").replaceChildren(view);  // an older answer arriving late is dropped
}

// A decision record (from /v1/explain, a query, the audit log): one row per output column and each source
// column it reads, with what the policy does to it and why.
function shaping(decision) {
  return (decision.columns || []).flatMap(c => (c.sources && c.sources.length ? c.sources : [null])
    .map(s => [c.name, s ? s.name : "", s ? s.action : "computed", s ? s.reason : ""]));
}

function decisionView(decision, heading = true) {
  const box = el("div");
  if (decision.refusal) {
    box.appendChild(el("p", "Refused: " + decision.refusal.message, "error"));
    return box;
  }
  if (heading) box.appendChild(el("h3", "How the policy shaped it"));
  box.appendChild(table(["column", "from", "you get", "why"], shaping(decision)));
  (decision.tables || []).filter(t => t.row_filter).forEach(t =>
    box.appendChild(el("p", "rows of " + t.name + " filtered: " + t.row_filter, "muted")));
  (decision.notes || []).forEach(n => box.appendChild(el("p", n, "muted")));
  return box;
}

// -- running a query and paging through its result ----------------------------------------------------------
async function run() {
  const sql = editor.value;
  $("output").classList.remove("hidden");
  $("error").textContent = "";
  ["result", "decision", "notices", "chart"].forEach(id => $(id).replaceChildren());
  $("result-area").classList.add("hidden");
  $("status").textContent = "running…";
  $("run").disabled = true;
  current = null;
  try {
    const body = await post("/v1/query", {sql, format: "page", page_size: PAGE});
    if (body.status.error) throw new Error(body.status.error.message);
    // above the rows: a filter or a cut is what makes an empty or short result read right
    $("notices").replaceChildren(...(body.status.notices || []).map(n => el("p", n, "notice")));
    current = {id: body.result.id, rows: body.result.rows, columns: body.columns, kinds: body.kinds, offset: 0};
    showPage(body.rows);
    $("decision").appendChild(decisionView(body.decision));
    $("status").textContent = plural(body.status.rows, "row") + (body.status.truncated ? " (cut at your role's limit)" : "");
    $("result-area").classList.remove("hidden");
    chooseChart();
    showTab($("tab-chart").classList.contains("active") ? "chart" : "table");
  } catch (e) {
    $("status").textContent = "";
    $("error").textContent = e.message;
  } finally {
    $("run").disabled = false;
  }
}

function showPage(rows) {
  current.shown = rows.length;
  $("result").replaceChildren(table(current.columns, rows, current.kinds));
  const from = rows.length ? current.offset + 1 : 0, to = current.offset + rows.length;
  $("page-info").textContent = "rows " + from.toLocaleString("en") + "–" + to.toLocaleString("en") + " of " + current.rows.toLocaleString("en");
  $("first-page").disabled = $("prev-page").disabled = current.offset <= 0;
  $("next-page").disabled = $("last-page").disabled = to >= current.rows;
}

// A page holds PAGE rows unless they are wide (the gateway then sends fewer): the next page starts where this one ended.
async function goTo(offset) {
  if (!current) return;
  try {
    const page = await call(withRole("/v1/results/" + current.id + "?offset=" + offset + "&limit=" + PAGE));
    current.offset = offset;
    showPage(page.rows);
  } catch (e) {
    $("error").textContent = e.message;
  }
}

// -- a quick chart of the result ----------------------------------------------------------------------------
function showTab(which) {
  $("tab-table").classList.toggle("active", which === "table");
  $("tab-chart").classList.toggle("active", which === "chart");
  $("result").classList.toggle("hidden", which !== "table");
  $("pager").classList.toggle("hidden", which !== "table");
  $("chart-area").classList.toggle("hidden", which !== "chart");
  if (which === "chart") drawChart();
}

// The first time column as x makes a line; otherwise the first text column makes bars; the y is the first
// number that is not the x. Both stay switchable.
function chooseChart() {
  const {columns, kinds} = current;
  const numbers = columns.filter((c, i) => kinds[i] === "number");
  const time = columns.find((c, i) => kinds[i] === "time");
  const text = columns.find((c, i) => kinds[i] === "text");
  const x = time || text || numbers[0] || columns[0];
  const y = numbers.find(c => c !== x) || "";
  fillSelect($("chart-x"), columns, x);
  fillSelect($("chart-y"), numbers, y);
  $("chart-kind").value = time || (!text && numbers.length > 1) ? "line" : "bar";
}

function fillSelect(select, names, chosen) {
  select.replaceChildren(...names.map(n => { const o = el("option", n); o.value = n; o.selected = n === chosen; return o; }));
}

async function drawChart() {
  if (!current) return;
  const x = $("chart-x").value, y = $("chart-y").value;
  if (!y) { $("chart").replaceChildren(el("p", "A chart needs a number column.", "muted")); return; }
  const page = await call(withRole("/v1/results/" + current.id + "?offset=0&limit=" + CHART_ROWS));
  const ix = current.columns.indexOf(x), iy = current.columns.indexOf(y);
  let points = page.rows.map(r => [r[ix], r[iy] === null ? null : Number(r[iy])]).filter(p => p[1] !== null && !isNaN(p[1]));
  const kind = $("chart-kind").value;
  const notes = [];
  if (current.rows > page.rows.length) notes.push("the first " + plural(page.rows.length, "row") + " of " + current.rows.toLocaleString("en"));
  if (kind === "bar" && points.length > BARS) { notes.push("the first " + BARS + " bars"); points = points.slice(0, BARS); }
  $("chart-note").textContent = notes.length ? "showing " + notes.join(", ") : "";
  $("chart").replaceChildren(kind === "bar" ? bars(points, x, y) : line(points, x, y));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  Object.entries(attributes).forEach(([k, v]) => node.setAttribute(k, v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

const W = 760, H = 300, L = 60, B = 40, T = 10;

function frame(points, x, y) {
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${y} by ${x}`});
  const values = points.map(p => p[1]);
  const low = Math.min(0, ...values), high = Math.max(0, ...values) || 1;
  const scale = v => T + (H - B - T) * (1 - (v - low) / (high - low));
  root.append(svg("line", {x1: L, y1: scale(0), x2: W, y2: scale(0), class: "axis"}),
              svg("line", {x1: L, y1: T, x2: L, y2: H - B, class: "axis"}),
              svg("text", {x: L - 6, y: scale(high) + 4, "text-anchor": "end"}, compact(high)),
              svg("text", {x: L - 6, y: scale(low) + 4, "text-anchor": "end"}, compact(low)),
              svg("text", {x: (L + W) / 2, y: H - 4, "text-anchor": "middle"}, x));
  return {root, scale};
}

function bars(points, x, y) {
  const {root, scale} = frame(points, x, y);
  const width = (W - L) / Math.max(1, points.length);
  points.forEach(([label, value], i) => {
    const top = Math.min(scale(value), scale(0)), height = Math.abs(scale(value) - scale(0));
    const bar = svg("rect", {x: L + i * width + 1, y: top, width: Math.max(1, width - 2), height, class: "bar"});
    bar.appendChild(svg("title", {}, label + ": " + value));
    root.appendChild(bar);
    if (points.length <= 20) root.appendChild(svg("text", {x: L + (i + 0.5) * width, y: H - B + 14, "text-anchor": "middle"}, short(label)));
  });
  return root;
}

function line(points, x, y) {
  const {root, scale} = frame(points, x, y);
  const step = (W - L) / Math.max(1, points.length - 1);
  const path = points.map(([, value], i) => (i ? "L" : "M") + (L + i * step).toFixed(1) + " " + scale(value).toFixed(1)).join(" ");
  root.appendChild(svg("path", {d: path, class: "line"}));
  if (points.length) {
    root.appendChild(svg("text", {x: L, y: H - B + 14}, short(points[0][0])));
    root.appendChild(svg("text", {x: W, y: H - B + 14, "text-anchor": "end"}, short(points[points.length - 1][0])));
  }
  return root;
}

function compact(n) {
  return Number(n).toLocaleString("en", {notation: "compact", maximumFractionDigits: 2});
}

function short(label) {
  const text = label === null ? "NULL" : String(label);
  return text.length > 12 ? text.slice(0, 11) + "…" : text;
}

// -- the audit log (roles with audit: true) -----------------------------------------------------------------
// One line of the audit table; logs written before the decision record kept a single reason.
function why(record) {
  if (record.event !== "decision") return record.status || "";
  if (record.refusal) return record.refusal.message;
  if (record.reason) return record.reason;
  return shaping(record).map(([column, , action, reason]) => column + ": " + action + (reason ? " (" + reason + ")" : "")).join("; ");
}

async function loadAudit() {
  const records = await call(withRole("/v1/audit?limit=50"));
  const rows = records.reverse().map(r => [r.seq, r.time, r.user, r.role, r.event, r.decision || "", r.query || "", why(r), r.rows ?? ""]);
  $("audit").replaceChildren(table(["#", "time", "user", "role", "event", "decision", "query", "why", "rows"], rows,
                                   ["number", "time"]));
}

// -- wiring -------------------------------------------------------------------------------------------------
$("signin").addEventListener("submit", e => {
  e.preventDefault();
  token = $("token").value.trim();
  role = "";
  sessionStorage.setItem("saferoom-token", token);
  signIn();
});
$("signout").addEventListener("click", signOut);
$("role").addEventListener("change", () => { role = $("role").value; signIn().then(explainSoon); });
$("run").addEventListener("click", run);
$("catalog-search").addEventListener("input", filterCatalog);
$("tab-table").addEventListener("click", () => showTab("table"));
$("tab-chart").addEventListener("click", () => showTab("chart"));
["chart-kind", "chart-x", "chart-y"].forEach(id => $(id).addEventListener("change", drawChart));
$("first-page").addEventListener("click", () => goTo(0));
$("prev-page").addEventListener("click", () => goTo(Math.max(0, current.offset - PAGE)));
$("next-page").addEventListener("click", () => goTo(current.offset + current.shown));
$("last-page").addEventListener("click", () => goTo(Math.max(0, current.rows - PAGE)));
$("load-audit").addEventListener("click", loadAudit);
if (token) signIn();
