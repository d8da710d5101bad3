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
let loadedStudies = [];                       // the rows fetched so far (filtered and sorted here)
let sortKey = "received", sortDescending = true;

// The report panel's words in the report's language (the SR's TID 1204 language).
const WORDS = {
  en: { finding: "Finding", image: "Image", box: "Box (source pixels)", confidence: "Confidence", sent: "Sent to: ",
        model: "Model", route: "route", after: "s after the last image", download: "Download the SR",
        frame: "frame", brightness: "brightness", contrast: "contrast", study: "Study" },
  zh: { finding: "所见", image: "图像", box: "框（源图像像素）", confidence: "置信度", sent: "已发送至：",
        model: "模型", route: "路由", after: "秒（自最后一幅图像）", download: "下载 SR",
        frame: "帧", brightness: "亮度", contrast: "对比度", study: "检查" },
};
let words = WORDS.en;

// DICOM Person Name (Family^Given^Middle^Prefix^Suffix, '=' between the
// alphabetic, ideographic and phonetic forms) as people write it.
function personName(pn) {
  if (!pn) return "";
  const groups = String(pn).split("=").filter(Boolean).map((g) => {
    const [family = "", given = "", middle = "", prefix = "", suffix = ""] = g.split("^");
    const rest = [prefix, given, middle].filter(Boolean).join(" ");
    return [family, rest].filter(Boolean).join(", ") + (suffix ? ", " + suffix : "");
  });
  return groups.length > 1 ? groups[0] + " (" + groups.slice(1).join(" / ") + ")" : groups[0] || "";
}

function studyDate(da) {
  return /^\d{8}$/.test(da || "") ? da.slice(0, 4) + "-" + da.slice(4, 6) + "-" + da.slice(6, 8) : (da || "");
}

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
    loadedStudies = append ? loadedStudies.concat(page.studies) : page.studies;
    nextCursor = page.next_cursor;
    document.getElementById("more").hidden = !nextCursor;
    const modalities = new Set(loadedStudies.flatMap((st) => st.modalities || []));
    const select = document.getElementById("filter-modality");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "all"), ...[...modalities].sort().map((m) => el("option", {}, m)));
    select.value = modalities.has(chosen) ? chosen : "";
    renderStudies();
    setStatus("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus(e.message, true);
  }
}

const SORT_VALUE = {
  received: (st) => st.first_received_at || "", patient: (st) => personName(st.patient_name).toLowerCase(),
  patient_id: (st) => st.patient_id || "", accession: (st) => st.accession_number || "",
  study_date: (st) => st.study_date || "", modalities: (st) => (st.modalities || []).join(","),
  images: (st) => st.instance_count || 0, state: (st) => st.state || "",
};

function renderStudies() {
  const state = document.getElementById("filter-state").value;
  const modality = document.getElementById("filter-modality").value;
  const from = document.getElementById("filter-date").value.replaceAll("-", "");
  const rows = loadedStudies.filter((st) => (!state || st.state === state) &&
    (!modality || (st.modalities || []).includes(modality)) && (!from || (st.study_date || "") >= from));
  const value = SORT_VALUE[sortKey];
  rows.sort((a, b) => {
    const x = value(a), y = value(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (sortDescending ? -1 : 1);
  });
  for (const th of document.querySelectorAll("#studies th[data-sort]")) {
    th.classList.toggle("sorted-asc", th.dataset.sort === sortKey && !sortDescending);
    th.classList.toggle("sorted-desc", th.dataset.sort === sortKey && sortDescending);
  }
  const tbody = document.querySelector("#studies tbody");
  tbody.replaceChildren();
  for (const st of rows) {
    const row = el("tr", { "data-study-uid": st.study_uid },
      el("td", {}, when(st.first_received_at)),
      el("td", {}, personName(st.patient_name)),
      el("td", {}, st.patient_id || ""),
      el("td", {}, st.accession_number || ""),
      el("td", {}, studyDate(st.study_date)),
      el("td", {}, (st.modalities || []).join(", ")),
      el("td", {}, st.instance_count),
      el("td", {}, el("span", { class: "state state-" + st.state }, st.state)));
    if (st.study_uid === selectedStudy) row.classList.add("selected");
    row.addEventListener("click", () => { location.hash = "study=" + st.study_uid; });
    tbody.append(row);
  }
  document.getElementById("shown-count").textContent = rows.length + " of " + loadedStudies.length + " loaded";
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

// frame: 1-based frame of a multi-frame image (api.findings), 0 = single-frame;
// the PNG route numbers frames from 0.
async function addKeyImage(container, sop, frame, findings) {
  const figure = el("div", { class: "key-image", "data-sop-instance-uid": sop, "data-frame": frame });
  const img = el("img", { alt: "instance " + sop + (frame ? " " + words.frame + " " + frame : "") });
  figure.append(img);
  // Brightness / contrast of the rendered 8-bit frame (the window the model saw), for a closer look.
  const brightness = el("input", { type: "range", min: "30", max: "250", value: "100" });
  const contrast = el("input", { type: "range", min: "30", max: "400", value: "100" });
  const adjust = () => { img.style.filter = "brightness(" + brightness.value + "%) contrast(" + contrast.value + "%)"; };
  brightness.addEventListener("input", adjust);
  contrast.addEventListener("input", adjust);
  container.append(figure, el("div", { class: "caption" }, "SOP Instance " + sop + (frame ? ", " + words.frame + " " + frame : "")),
    el("div", { class: "wl" }, el("label", {}, words.brightness + " ", brightness), el("label", {}, words.contrast + " ", contrast)));
  try {
    img.src = await imageUrl(sop, frame ? frame - 1 : 0);
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
  for (const box of figure.querySelectorAll(".finding-box")) {
    box.style.pointerEvents = "auto";
    box.addEventListener("mouseenter", () => linkFinding(box.dataset.findingId, true));
    box.addEventListener("mouseleave", () => linkFinding(box.dataset.findingId, false));
  }
}

function linkFinding(id, on) {
  for (const node of document.querySelectorAll('[data-finding-id="' + id + '"]')) {
    if (node.tagName === "TR") node.classList.toggle("linked", on);
    else if (on) node.setAttribute("data-linked", ""); else node.removeAttribute("data-linked");
  }
}

async function showStudy(uid) {
  selectedStudy = uid;
  for (const row of document.querySelectorAll("#studies tbody tr"))
    row.classList.toggle("selected", row.dataset.studyUid === uid);
  while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
  words = WORDS.en;
  const panel = document.getElementById("report-panel");
  const meta = document.getElementById("report-meta");
  const text = document.getElementById("report-text");
  const exportsDiv = document.getElementById("report-exports");
  const findingsBody = document.querySelector("#findings tbody");
  const images = document.getElementById("key-images");
  panel.hidden = false;
  const listed = loadedStudies.find((st) => st.study_uid === uid);
  document.getElementById("report-title").textContent =
    (listed ? [personName(listed.patient_name), listed.patient_id, studyDate(listed.study_date)].filter(Boolean).join(" · ") + " — "
            : "") + "Study " + uid;
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
  words = String(report.language || "").startsWith("zh") ? WORDS.zh : WORDS.en;
  for (const th of document.querySelectorAll("#findings th[data-i18n]")) th.textContent = words[th.dataset.i18n];
  meta.append(el("div", {}, words.model + " " + report.model + (report.model_version ? " (" + report.model_version + ")" : "") +
    ", " + words.route + " " + report.route + ", " + (report.language || "?") + ", " + when(report.created_at) +
    (report.latency_ms != null ? ", " + (report.latency_ms / 1000).toFixed(1) + " " + words.after : "")));
  const srLink = el("a", { href: "#" }, words.download + " (" + report.sr_sop_instance_uid + ")");
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
    exportsDiv.append(words.sent, ...report.exports.map((x) =>
      el("span", { class: "state state-" + (x.state === "sent" ? "reported" : x.state) },
        x.destination + (x.object ? " " + x.object.toUpperCase().replace("_", " ") : "") + ": " + x.state +
        (x.last_error ? " (" + x.last_error + ")" : ""))));
  const groups = new Map();
  report.findings.forEach((f, i) => {
    f.index = i + 1;
    // Each row is linked to its box: hovering either marks both; a click shows the image.
    const row = el("tr", { "data-finding-id": f.finding_id }, el("td", {}, f.index), el("td", {}, f.label || f.text || ""),
      el("td", {}, f.frame ? words.frame + " " + f.frame : ""),
      el("td", {}, [f.x1, f.y1, f.x2, f.y2].map((v) => v == null ? "?" : Math.round(v)).join(", ")),
      el("td", {}, f.confidence == null ? "" : f.confidence.toFixed(1) + " %"));
    row.addEventListener("mouseenter", () => linkFinding(f.finding_id, true));
    row.addEventListener("mouseleave", () => linkFinding(f.finding_id, false));
    row.addEventListener("click", () => {
      const box = document.querySelector('.finding-box[data-finding-id="' + f.finding_id + '"]');
      if (box) box.scrollIntoView({ block: "center", behavior: "smooth" });
    });
    findingsBody.append(row);
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
for (const id of ["filter-state", "filter-modality", "filter-date"])
  document.getElementById(id).addEventListener("input", renderStudies);
for (const th of document.querySelectorAll("#studies th[data-sort]"))
  th.addEventListener("click", () => {
    sortDescending = th.dataset.sort === sortKey ? !sortDescending : th.dataset.sort === "received";
    sortKey = th.dataset.sort;
    renderStudies();
  });
window.addEventListener("hashchange", route);
loadStudies(false).then(route);
setInterval(() => { if (!nextCursor || document.querySelectorAll("#studies tbody tr").length <= 50) loadStudies(false); }, 15000);
