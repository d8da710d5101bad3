// The results page: recent studies from /api/v1/studies; for the chosen one its
// latest report (/api/v1/studies/{uid}/report), and the key images rendered by
// the server (/api/v1/instances/{sop}/png) with the finding boxes drawn over
// them. Boxes are in source pixels; the PNG is the source frame, so a box is
// placed at x / image width (as a percentage) whatever size the image is shown at.
"use strict";

let token = sessionStorage.getItem("firstread-token") || "";
let nextCursor = null;
let selectedStudy = null;
const objectUrls = [];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function setStatus(text, isError) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = "status" + (isError ? " error" : "");
}

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401) {
    document.getElementById("token-form").hidden = false;
    throw new Error("the server needs its API token");
  }
  return response;
}

async function apiJson(path) {
  const response = await api(path);
  const body = await response.json();
  if (!response.ok) {
    const e = new Error(body.error || response.statusText);
    e.status = response.status;
    throw e;
  }
  return body;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

async function loadStudies(append) {
  try {
    let path = "/api/v1/studies?limit=50";
    if (append && nextCursor) path += "&cursor=" + encodeURIComponent(nextCursor);
    const page = await apiJson(path);
    const tbody = document.querySelector("#studies tbody");
    if (!append) tbody.replaceChildren();
    for (const s of page.studies) {
      const row = el("tr", { "data-study-uid": s.study_uid },
        el("td", {}, when(s.first_received_at)),
        el("td", {}, [s.patient_name, s.patient_id].filter(Boolean).join(" · ")),
        el("td", {}, s.accession_number || ""),
        el("td", {}, (s.modalities || []).join(", ")),
        el("td", {}, s.instance_count),
        el("td", {}, el("span", { class: "state state-" + s.state }, s.state)));
      if (s.study_uid === selectedStudy) row.classList.add("selected");
      row.addEventListener("click", () => { location.hash = "study=" + s.study_uid; });
      tbody.append(row);
    }
    nextCursor = page.next_cursor;
    document.getElementById("more").hidden = !nextCursor;
    setStatus("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function imageUrl(sop, frame) {
  const response = await api("/api/v1/instances/" + encodeURIComponent(sop) + "/png?frame=" + frame);
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  const url = URL.createObjectURL(await response.blob());
  objectUrls.push(url);
  return url;
}

async function addKeyImage(container, sop, frame, findings) {
  const figure = el("div", { class: "key-image", "data-sop-instance-uid": sop, "data-frame": frame });
  const img = el("img", { alt: "instance " + sop + " frame " + frame });
  figure.append(img);
  container.append(figure, el("div", { class: "caption" }, "SOP Instance " + sop + ", frame " + frame));
  try {
    img.src = await imageUrl(sop, frame);
    await img.decode();
  } catch (e) {
    figure.replaceChildren(el("span", { class: "error" }, "image: " + e.message));
    return;
  }
  const w = img.naturalWidth, h = img.naturalHeight;
  findings.forEach((f) => {
    if ([f.x1, f.y1, f.x2, f.y2].some((v) => v == null)) return;
    const box = el("div", { class: "finding-box", "data-finding-id": f.finding_id, title: f.label || "" },
      el("span", {}, f.index + ". " + (f.label || "finding")));
    box.style.left = (100 * f.x1 / w) + "%";
    box.style.top = (100 * f.y1 / h) + "%";
    box.style.width = (100 * (f.x2 - f.x1) / w) + "%";
    box.style.height = (100 * (f.y2 - f.y1) / h) + "%";
    figure.append(box);
  });
}

async function showStudy(uid) {
  selectedStudy = uid;
  for (const row of document.querySelectorAll("#studies tbody tr"))
    row.classList.toggle("selected", row.dataset.studyUid === uid);
  while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
  const panel = document.getElementById("report-panel");
  const meta = document.getElementById("report-meta");
  const text = document.getElementById("report-text");
  const exportsDiv = document.getElementById("report-exports");
  const findingsBody = document.querySelector("#findings tbody");
  const images = document.getElementById("key-images");
  panel.hidden = false;
  document.getElementById("report-title").textContent = "Study " + uid;
  for (const n of [meta, text, exportsDiv, findingsBody, images]) n.replaceChildren();
  let report;
  try {
    report = await apiJson("/api/v1/studies/" + encodeURIComponent(uid) + "/report");
  } catch (e) {
    meta.append(el("span", { class: e.status === 404 ? "" : "error" }, e.message));
    try {
      const detail = await apiJson("/api/v1/studies/" + encodeURIComponent(uid));
      meta.append(el("div", {}, "State: " + detail.study.state));
      const failed = detail.jobs.filter((j) => j.error);
      for (const j of failed) meta.append(el("div", { class: "error" }, "job " + j.job_id + " (" + j.state + "): " + j.error));
      if (detail.instances.length)
        await addKeyImage(images, detail.instances[0].sop_instance_uid, 0, []);
    } catch (_) { /* the message above says enough */ }
    return;
  }
  meta.append(el("div", {}, "Model " + report.model + (report.model_version ? " (" + report.model_version + ")" : "") +
    ", route " + report.route + ", language " + (report.language || "?") + ", " + when(report.created_at) +
    (report.latency_ms != null ? ", " + (report.latency_ms / 1000).toFixed(1) + " s after the last image" : "")));
  const srLink = el("a", { href: "#" }, "Download the SR (" + report.sr_sop_instance_uid + ")");
  srLink.addEventListener("click", async (event) => {
    event.preventDefault();
    const response = await api(report.sr_url);
    const url = URL.createObjectURL(await response.blob());
    const a = el("a", { href: url, download: report.sr_sop_instance_uid + ".dcm" });
    document.body.append(a); a.click(); a.remove();
  });
  meta.append(srLink);
  text.textContent = report.text;
  if (report.exports.length)
    exportsDiv.append("Sent to: ", ...report.exports.map((x) =>
      el("span", { class: "state state-" + (x.state === "sent" ? "reported" : x.state) },
        x.destination + ": " + x.state + (x.last_error ? " (" + x.last_error + ")" : ""))));
  const groups = new Map();
  report.findings.forEach((f, i) => {
    f.index = i + 1;
    findingsBody.append(el("tr", {}, el("td", {}, f.index), el("td", {}, f.label || f.text || ""),
      el("td", {}, [f.x1, f.y1, f.x2, f.y2].map((v) => v == null ? "?" : Math.round(v)).join(", ")),
      el("td", {}, f.confidence == null ? "" : f.confidence.toFixed(2))));
    if (!f.sop_instance_uid) return;
    const key = f.sop_instance_uid + "/" + (f.frame || 0);
    if (!groups.has(key)) groups.set(key, { sop: f.sop_instance_uid, frame: f.frame || 0, findings: [] });
    groups.get(key).findings.push(f);
  });
  if (groups.size === 0) {
    const detail = await apiJson("/api/v1/studies/" + encodeURIComponent(uid));
    if (detail.instances.length) groups.set("first", { sop: detail.instances[0].sop_instance_uid, frame: 0, findings: [] });
  }
  for (const g of groups.values()) await addKeyImage(images, g.sop, g.frame, g.findings);
}

function route() {
  const match = /study=([0-9.]+)/.exec(location.hash);
  if (match) showStudy(match[1]);
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token-input").value.trim();
  sessionStorage.setItem("firstread-token", token);
  document.getElementById("token-form").hidden = true;
  loadStudies(false);
  route();
});
document.getElementById("more").addEventListener("click", () => loadStudies(true));
window.addEventListener("hashchange", route);
loadStudies(false).then(route);
setInterval(() => { if (!nextCursor || document.querySelectorAll("#studies tbody tr").length <= 50) loadStudies(false); }, 15000);
