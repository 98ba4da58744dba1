// lorasynth web page: plain DOM, no build step. All user data goes in via textContent.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { key: sessionStorage.getItem("lorasynth-key"), me: null, subject: null, timer: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 2500);
}

function idemKey() {
  return crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (method === "POST") headers["Idempotency-Key"] = idemKey();
  let payload;
  if (body !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  const res = await fetch(path, { method, headers, body: payload });
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : await res.blob();
  if (!res.ok) throw new Error(data.detail || `${res.status} ${res.statusText}`);
  return data;
}

function showError(id, err) { $(id).textContent = err ? String(err.message || err) : ""; }

// ---- sign in ----------------------------------------------------------------------------
async function signIn(key) {
  state.key = key;
  try {
    state.me = await api("GET", "/v1/whoami");
  } catch (err) {
    state.key = null;
    sessionStorage.removeItem("lorasynth-key");
    showError("#signin-error", err);
    return;
  }
  sessionStorage.setItem("lorasynth-key", key);
  showError("#signin-error");
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#who").hidden = false;
  $("#who-text").textContent = `${state.me.role} · tenant ${state.me.tenant_id.slice(0, 8)}`;
  for (const node of document.querySelectorAll("[data-roles]")) {
    node.hidden = !node.dataset.roles.split(" ").includes(state.me.role);
  }
  const first = [...document.querySelectorAll("#tabs button")].find((b) => !b.hidden);
  openTab(first.dataset.tab);
}

function signOut() {
  sessionStorage.removeItem("lorasynth-key");
  Object.assign(state, { key: null, me: null, subject: null });
  clearInterval(state.timer);
  $("#app").hidden = true;
  $("#who").hidden = true;
  $("#signin").hidden = false;
  $("#key").value = "";
  $("#subject-detail").hidden = true;
  for (const id of ["#subject-list", "#lora-list", "#review-list", "#library-list"]) $(id).replaceChildren();
}

function openTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${name}`;
  clearInterval(state.timer);
  const refresh = { subjects: refreshSubjects, review: refreshReview, library: refreshLibrary, status: refreshStatus }[name];
  refresh();
  state.timer = setInterval(refresh, 1000);
}

// ---- subjects ---------------------------------------------------------------------------
async function refreshSubjects() {
  try {
    const { subjects } = await api("GET", "/v1/subjects");
    const list = $("#subject-list");
    list.replaceChildren(...subjects.map((s) => el("li", {
      class: s.id === state.subject ? "selected" : "",
      "data-testid": "subject-item",
      onclick: () => { state.subject = s.id; refreshSubjects(); },
    }, el("span", {}, s.display_name), el("span", { class: "meta" }, `${s.photo_count} photo(s)`))));
    if (!subjects.length) list.replaceChildren(el("li", { class: "meta" }, "No subjects yet."));
    if (state.subject && !subjects.some((s) => s.id === state.subject)) state.subject = null;
    showError("#subjects-error");
    await refreshDetail();
  } catch (err) { showError("#subjects-error", err); }
}

async function refreshDetail() {
  const box = $("#subject-detail");
  if (!state.subject) { box.hidden = true; return; }
  const s = await api("GET", `/v1/subjects/${state.subject}`);
  box.hidden = false;
  $("#subject-name").textContent = s.display_name;
  const c = s.consent;
  $("#subject-consent").textContent =
    `Consent by ${c.granted_by} for ${c.scope.join(", ")} until ${c.expires_at.slice(0, 10)}` +
    (c.valid_for.length ? "" : " — EXPIRED");
  $("#photo-summary").textContent = s.photos.length
    ? `${s.photos.length} photo(s) embedded; ${s.photos.filter((p) => p.stored).length} kept on disk`
    : "No photos yet.";
  $("#lora-list").replaceChildren(...s.loras.slice().reverse().map((l) => loraCard(l)));
}

function metricRows(l) {
  const q = l.quality || {};
  const warmth = l.method === "diffusion" && l.temperature !== 1 ? `, temperature ${l.temperature}` : "";
  const rows = [["method", `${l.method} (seed ${l.seed}${warmth})`]];
  if (l.time_ms !== null) rows.push(["time", `${l.time_ms.toFixed(1)} ms`]);
  if (q.weight_norm !== undefined) rows.push(["weight norm", `${q.weight_norm} (z ${q.norm_z})`]);
  if (q.id_similarity !== null && q.id_similarity !== undefined) rows.push(["preview ID similarity", q.id_similarity]);
  if (l.file) rows.push(["sha256", l.file.sha256.slice(0, 16) + "…"]);
  if (l.reason) rows.push(["note", l.reason]);
  return el("dl", {}, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function loraCard(l, { review = false } = {}) {
  const role = state.me.role;
  const actions = el("div", { class: "actions" });
  if (review) {
    const reason = el("input", { placeholder: "reason (optional)", "data-testid": "review-reason" });
    actions.append(
      reason,
      el("button", { class: "ok", "data-testid": "approve", onclick: () => decide(l, "approve", reason.value) }, "Approve"),
      el("button", { class: "danger", "data-testid": "reject", onclick: () => decide(l, "reject", reason.value) }, "Reject"),
    );
  }
  if (l.file && (role === "consumer" || role === "admin")) {
    actions.append(
      el("button", { "data-testid": "download", onclick: () => download(l, "diffusers") }, "Download"),
      el("button", { class: "ghost", onclick: () => download(l, "kohya") }, "kohya"),
    );
  }
  if (l.status === "approved" && (role === "reviewer" || role === "admin")) {
    actions.append(el("button", { class: "ghost", onclick: () => revoke(l) }, "Revoke"));
  }
  const head = el("div", {},
    el("strong", {}, `LoRA v${l.version} `),
    el("span", { class: `badge ${l.status}`, "data-testid": "lora-status" }, l.status.replace("_", " ")),
    metricRows(l));
  const card = el("div", { class: "lora", "data-testid": "lora-card", "data-lora": l.lora_id }, head, actions);
  if (l.preview_url && role !== "consumer") {
    const img = el("img", { alt: "preview images", "data-testid": "preview" });
    card.append(img);
    loadPreview(img, l.preview_url);
  }
  return card;
}

const previewCache = new Map();
async function loadPreview(img, url) {
  if (!previewCache.has(url)) {
    previewCache.set(url, api("GET", url).then((blob) => URL.createObjectURL(blob)).catch(() => ""));
  }
  img.src = await previewCache.get(url);
}

async function decide(l, decision, reason) {
  try {
    await api("POST", `/v1/loras/${l.lora_id}/review`, { decision, reason: reason || null });
    toast(`LoRA ${decision === "approve" ? "approved" : "rejected"}`);
    refreshReview();
  } catch (err) { showError("#review-error", err); }
}

async function revoke(l) {
  if (!confirm("Revoke this LoRA? Its file will be deleted.")) return;
  try { await api("POST", `/v1/loras/${l.lora_id}/revoke`, { reason: "revoked on the web page" }); toast("LoRA revoked"); }
  catch (err) { toast(err.message); }
}

async function download(l, format) {
  try {
    const blob = await api("GET", `/v1/loras/${l.lora_id}/file?format=${format}`);
    const a = el("a", { href: URL.createObjectURL(blob), download: `lora-${l.lora_id}-v${l.version}-${format}.safetensors` });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) { toast(err.message); }
}

async function sha256Hex(file) {
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function createSubject(event) {
  event.preventDefault();
  const f = event.target;
  const scope = [...f.querySelectorAll("input[name=scope]:checked")].map((x) => x.value);
  const evidence = f.evidence.files[0];
  const body = {
    display_name: f.display_name.value.trim(),
    consent: {
      granted_by: f.granted_by.value.trim(),
      scope,
      expires_at: new Date(`${f.expires_at.value}T23:59:59Z`).toISOString(),
      evidence_sha256: evidence ? await sha256Hex(evidence) : await sha256Hex(new Blob([f.granted_by.value])),
    },
  };
  try {
    const { id } = await api("POST", "/v1/subjects", body);
    state.subject = id;
    f.reset();
    setDefaultExpiry();
    $("#new-subject").open = false;
    toast("Subject created");
    refreshSubjects();
  } catch (err) { showError("#subjects-error", err); }
}

function uploadOne(file) {
  // XMLHttpRequest, not fetch: it reports upload progress.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/subjects/${state.subject}/photos`);
    xhr.setRequestHeader("Authorization", `Bearer ${state.key}`);
    xhr.setRequestHeader("Idempotency-Key", idemKey());
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) $("#upload-progress").value = (100 * e.loaded) / e.total; };
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 201) resolve(data);
      else reject(new Error(data.detail || `upload failed: ${xhr.status}`));
    };
    xhr.onerror = () => reject(new Error("upload failed: connection error"));
    const form = new FormData();
    form.append("file", file);
    xhr.send(form);
  });
}

async function uploadPhotos(event) {
  const files = [...event.target.files];
  const bar = $("#upload-progress");
  bar.hidden = false;
  let done = 0;
  showError("#detail-error");
  for (const file of files) {
    bar.value = 0;
    $("#upload-status").textContent = `uploading ${file.name}…`;
    try {
      const r = await uploadOne(file);
      done += 1;
      const notes = (r.warnings || []).length ? ` — ${r.warnings.join("; ")}` : "";
      $("#upload-status").textContent = `${done}/${files.length} uploaded (faces found: ${r.faces_found})${notes}`;
    } catch (err) { showError("#detail-error", err); }
  }
  bar.value = 100;
  event.target.value = "";
  refreshSubjects();
}

async function requestLora(event) {
  event.preventDefault();
  const f = event.target;
  try {
    const body = { method: f.method.value, seed: Number(f.seed.value) };
    // Only the prior draws noise; the service refuses a temperature for the other methods.
    if (body.method === "diffusion") body.temperature = Number(f.temperature.value);
    const r = await api("POST", `/v1/subjects/${state.subject}/loras`, body);
    toast(`LoRA ${r.status}`);
    showError("#detail-error");
    refreshDetail();
  } catch (err) { showError("#detail-error", err); }
}

async function deleteSubject() {
  if (!confirm("Delete this subject and everything held about them? This cannot be undone.")) return;
  try {
    await api("DELETE", `/v1/subjects/${state.subject}`);
    state.subject = null;
    toast("Subject erased");
    refreshSubjects();
  } catch (err) { showError("#detail-error", err); }
}

async function exportSubject() {
  try {
    const data = await api("GET", `/v1/subjects/${state.subject}/export`);
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
    const a = el("a", { href: URL.createObjectURL(blob), download: `subject-${state.subject}.json` });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) { showError("#detail-error", err); }
}

// ---- review, library, status ------------------------------------------------------------
async function refreshReview() {
  try {
    const { loras } = await api("GET", "/v1/loras?status=in_review");
    $("#review-count").textContent = loras.length || "";
    const list = $("#review-list");
    const shown = [...list.querySelectorAll("[data-lora]")].map((n) => n.dataset.lora).join();
    if (shown !== loras.map((l) => l.lora_id).join() || !loras.length) {
      list.replaceChildren(...loras.map((l) => loraCard(l, { review: true })));
      if (!loras.length) list.replaceChildren(el("p", { class: "meta" }, "Nothing waiting for review."));
    }
    showError("#review-error");
  } catch (err) { showError("#review-error", err); }
}

async function refreshLibrary() {
  try {
    const { loras } = await api("GET", "/v1/loras?status=approved");
    const list = $("#library-list");
    list.replaceChildren(...loras.map((l) => loraCard(l)));
    if (!loras.length) list.replaceChildren(el("p", { class: "meta" }, "No approved LoRAs."));
    showError("#library-error");
  } catch (err) { showError("#library-error", err); }
}

async function refreshStatus() {
  const health = await fetch("/healthz").then((r) => r.json()).catch((e) => ({ error: String(e) }));
  $("#health").textContent = JSON.stringify(health, null, 2);
  const text = await fetch("/metrics").then((r) => r.text()).catch(() => "");
  $("#metrics-summary").textContent = text.split("\n")
    .filter((line) => line.startsWith("lorasynth_") && !line.includes("_bucket") && !line.includes("_created"))
    .join("\n");
}

function setDefaultExpiry() {
  const d = new Date(Date.now() + 365 * 24 * 3600 * 1000);
  $("#subject-form").expires_at.value = d.toISOString().slice(0, 10);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#key").value.trim()); });
  $("#signout").addEventListener("click", signOut);
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => openTab(b.dataset.tab));
  $("#subject-form").addEventListener("submit", createSubject);
  $("#subject-form").evidence.addEventListener("change", async (e) => {
    const file = e.target.files[0];
    $("#evidence-hash").textContent = file ? (await sha256Hex(file)).slice(0, 16) + "…" : "none";
  });
  $("#photo-input").addEventListener("change", uploadPhotos);
  $("#lora-form").addEventListener("submit", requestLora);
  $("#lora-form").method.addEventListener("change", (e) => {
    e.target.form.temperature.disabled = e.target.value !== "diffusion";
  });
  $("#delete-subject").addEventListener("click", deleteSubject);
  $("#export").addEventListener("click", exportSubject);
  setDefaultExpiry();
  if (state.key) signIn(state.key);
});
