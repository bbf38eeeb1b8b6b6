// The reviewer's queue: requests you made or may review, each file shown as it would leave (a table, text,
// a notebook's cells, an image), the check's findings marked in place, and approve / return / reject.
// Every value is written as text (textContent); images are shown from blobs this page fetched itself.
"use strict";

let openRequest = null;  // the request on show, as the gateway last sent it

async function loadRequests() {
  $("requests-section").classList.remove("hidden");
  let found;
  try {
    found = await call("/v1/requests");
  } catch (e) {
    $("requests").replaceChildren(el("p", e.message, "error"));
    return;
  }
  if (!found.length) { $("requests").replaceChildren(el("p", "No requests for you or from you.", "muted")); return; }
  const list = table(["id", "kind", "state", "by", "reason"], found.slice().reverse().map(r => [r.id, r.kind, r.state, r.requester, r.reason]));
  [...list.tBodies[0].rows].forEach(tr => {
    tr.classList.add("request-row");
    tr.dataset.id = tr.cells[0].textContent;
    tr.addEventListener("click", () => openRequestView(tr.dataset.id));
  });
  $("requests").replaceChildren(list);
}

async function openRequestView(id) {
  const request = await call("/v1/requests/" + encodeURIComponent(id));
  openRequest = request;
  $("request-view").classList.remove("hidden");
  $("request-title").textContent = request.kind + " request " + request.id + " (" + request.state + ")";
  $("request-meta").textContent = "by " + request.requester + ": " + request.reason + " · approvals " +
    request.approvals.length + " of " + request.approvals_needed;
  $("review-status").textContent = "";
  $("review-controls").classList.toggle("hidden", !(request.may_review && request.state === "submitted"));
  $("deliver-controls").classList.toggle("hidden", !(request.may_review && request.state === "delivery-failed"));
  $("request-detail").replaceChildren(...detailLines(request));
  const findings = (request.check && request.check.findings) || [];
  $("request-findings").replaceChildren(findingsView(findings));
  $("request-files").replaceChildren(...await Promise.all(request.files.map(f => fileView(request, f, findings))));
}

function detailLines(request) {
  const d = request.detail || {};
  const lines = [];
  if (d.role) lines.push("role " + d.role + " for " + d.seconds + " s");
  if (d.column) lines.push("column " + d.column + " (" + d.action + ") for " + d.seconds + " s");
  if (d.requirement) lines.push("package " + d.requirement);
  if (request.expires) lines.push("in force until " + request.expires);
  request.reviews.forEach(r => lines.push(r.verdict + " by " + r.reviewer + (r.comment ? ": " + r.comment : "")));
  return lines.map(text => el("p", text, "muted"));
}

function findingsView(findings) {
  if (!findings.length) return el("p", "saferoom check found nothing.", "muted");
  const box = el("div", null, "findings");
  box.appendChild(el("h3", findings.length + " finding" + (findings.length === 1 ? "" : "s") + " of saferoom check: read these first"));
  box.appendChild(table(["file", "where", "what", "preview"], findings.map(f => [f.file, f.location, f.rule, f.preview])));
  return box;
}

// One file: its name and hash, a comment box, and its content rendered with its findings marked.
async function fileView(request, file, findings) {
  const box = el("div", null, "request-file");
  box.dataset.name = file.name;
  box.appendChild(el("h3", file.name));
  box.appendChild(el("p", file.size.toLocaleString("en") + " bytes · sha256 " + file.sha256, "muted"));
  const mine = findings.filter(f => f.file === file.name);
  const path = "/v1/requests/" + encodeURIComponent(request.id) + "/files/" + encodeURIComponent(file.name);
  try {
    const shown = await call(path + "/preview");
    box.appendChild(shown.kind === "image" ? await imageView(path) : rendered(shown, mine));
  } catch (e) {
    box.appendChild(el("p", e.message, "error"));
  }
  const note = el("input", null, "file-comment");
  note.placeholder = "a comment on " + file.name;
  note.dataset.name = file.name;
  box.appendChild(note);
  return box;
}

function rendered(shown, findings) {
  if (shown.kind === "table") return tableView(shown, findings);
  if (shown.kind === "notebook") return notebookView(shown, findings);
  if (shown.kind === "text") return textView(shown, findings);
  return el("p", shown.kind === "binary" ? "A binary file of " + shown.size + " bytes: not shown." : "Cannot be shown: " + shown.problem, "muted");
}

function tableView(shown, findings) {
  const box = el("div", null, "result");
  const t = table(shown.columns, shown.rows);
  findings.forEach(f => {
    const at = /^row (\d+), column (.+)$/.exec(f.location);
    const row = at && t.tBodies[0].rows[Number(at[1]) - 1];
    const cell = row && row.cells[shown.columns.indexOf(at[2])];
    if (cell) mark(cell, f);
  });
  box.appendChild(t);
  if (shown.total !== null && shown.total > shown.shown) box.appendChild(el("p", "the first " + shown.shown + " of " + shown.total + " rows", "muted"));
  return box;
}

function textView(shown, findings) {
  const box = el("pre", null, "text-file");
  shown.text.split("\n").forEach((text, i) => {
    const line = el("span", text + "\n");
    findings.filter(f => f.location === "line " + (i + 1)).forEach(f => mark(line, f));
    box.appendChild(line);
  });
  return box;
}

function notebookView(shown, findings) {
  const box = el("div", null, "notebook");
  shown.cells.forEach((cell, i) => {
    const part = el("div", null, "nb-cell nb-" + cell.type);
    part.appendChild(el("pre", cell.source));
    cell.outputs.forEach(o => part.appendChild(outputView(o)));
    findings.filter(f => new RegExp("^cell " + (i + 1) + "\\b").test(f.location)).forEach(f => mark(part, f));
    box.appendChild(part);
  });
  return box;
}

// A notebook output: text as text; a PNG or JPEG the gateway checked as a data: image (the page's CSP allows
// data: for images only); an SVG as its source text, never drawn (it could hold script).
const OUTPUT_IMAGES = ["image/png", "image/jpeg"];

function outputView(o) {
  if (o.svg !== undefined) {
    const box = el("div", null, "nb-output");
    box.appendChild(el("p", "an SVG output, shown as its text:", "nb-note"));
    box.appendChild(el("pre", o.svg, "nb-svg"));
    return box;
  }
  if (o.image && OUTPUT_IMAGES.includes(o.image.type) && /^[A-Za-z0-9+/=]+$/.test(o.image.base64)) {
    const img = el("img", null, "request-image nb-image");
    img.src = "data:" + o.image.type + ";base64," + o.image.base64;
    img.alt = "an image output of the notebook";
    return img;
  }
  if (o.note) return el("pre", "[" + o.note + "]", "nb-output");
  return el("pre", o.text, "nb-output");
}

function mark(node, finding) {
  node.classList.add("finding");
  node.title = (node.title ? node.title + "\n" : "") + finding.kind + ": " + finding.rule;
}

async function imageView(path) {
  const response = await fetch(path, {headers: {Authorization: "Bearer " + token}});
  if (!response.ok) return el("p", "the image could not be read", "error");
  const img = el("img", null, "request-image");
  img.src = URL.createObjectURL(await response.blob());
  img.alt = "the file as uploaded";
  return img;
}

async function reviewOpen(verdict) {
  if (!openRequest) return;
  const comments = {};
  document.querySelectorAll(".file-comment").forEach(box => { if (box.value.trim()) comments[box.dataset.name] = box.value.trim(); });
  const files = Object.fromEntries(openRequest.files.map(f => [f.name, f.sha256]));  // the versions on screen
  await act("review", {headers: {"Content-Type": "application/json"},
    body: JSON.stringify({verdict, files, comment: $("review-comment").value, comments})}, verdict + " recorded");
}

async function deliverOpen() {
  if (openRequest) await act("deliver", {}, "delivered");
}

// POST one action on the open request, then show it again with what became of it (or why not).
async function act(action, options, said) {
  try {
    const done = await call("/v1/requests/" + encodeURIComponent(openRequest.id) + "/" + action, {method: "POST", ...options});
    await openRequestView(done.id);
    $("review-status").textContent = said + ": the request is " + done.state;
    await loadRequests();
  } catch (e) {
    $("review-status").textContent = e.message;
  }
}

function forgetRequests() {
  openRequest = null;
  ["requests", "request-files", "request-findings", "request-detail"].forEach(id => $(id).replaceChildren());
  $("request-view").classList.add("hidden");
  $("requests-section").classList.add("hidden");
}

$("load-requests").addEventListener("click", loadRequests);
$("approve").addEventListener("click", () => reviewOpen("approve"));
$("return").addEventListener("click", () => reviewOpen("return"));
$("reject").addEventListener("click", () => reviewOpen("reject"));
$("deliver").addEventListener("click", deliverOpen);
