// Clinician review page. Plain JavaScript, no external libraries: the page must work on a
// hospital network without internet access. No credential is ever part of the page source.
// With the hospital's identity provider (auth.json says "oidc") the clinician signs in there:
// authorization code with PKCE, the page a public client; the access token stays in this
// page's memory (never in storage), is refreshed before it expires, and is gone on reload or
// sign-out. Without one (the embedded default, local use) the page asks for the API key
// (kept in sessionStorage for this tab), or a login proxy adds it.
"use strict";

const OUTCOME_NAMES = {
  cemented_refracture: "Refracture of the cemented vertebra",
  adjacent_fracture: "Fracture of an adjacent vertebra",
  remote_fracture: "Fracture of a remote vertebra",
};
const state = { schema: null, examples: [], model: null, record: null, results: null };
// The served horizons (GET /model) and the headline; these defaults are the service's own.
const DEFAULT_HORIZONS = [3, 6, 12, 24];
const HEADLINE_MONTHS = 24;
const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------- sign-in (OIDC)
// Only the PKCE verifier and the state survive the round trip to the provider
// (sessionStorage, removed on return); the tokens live in this object only.
const auth = { config: null, accessToken: null, refreshToken: null, expiresAt: 0, user: null, refreshing: null };

function b64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
function randomText(n) { return b64url(crypto.getRandomValues(new Uint8Array(n))); }
function redirectUri() { return location.origin + location.pathname; }

async function signIn() {
  const c = auth.config;
  const verifier = randomText(48);
  const stateText = randomText(24);
  sessionStorage.setItem("refracture-pkce", JSON.stringify({ verifier, state: stateText }));
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const params = new URLSearchParams({
    response_type: "code", client_id: c.client_id, redirect_uri: redirectUri(), scope: c.scope,
    state: stateText, code_challenge: challenge, code_challenge_method: "S256", resource: c.resource,
  });
  // offline_access (a refresh token) must be consented to explicitly (OpenID Connect Core 11).
  if (c.scope.split(" ").includes("offline_access")) params.set("prompt", "consent");
  location.assign(c.authorization_endpoint + "?" + params.toString());
}

async function tokenRequest(fields) {
  const c = auth.config;
  const resp = await fetch(c.token_endpoint, {
    method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ client_id: c.client_id, resource: c.resource, ...fields }),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok || !data.access_token) throw new Error(data.error_description || data.error || `HTTP ${resp.status}`);
  auth.accessToken = data.access_token;
  if (data.refresh_token) auth.refreshToken = data.refresh_token;
  auth.expiresAt = Date.now() + 1000 * (Number(data.expires_in) || 300);
  if (data.id_token) {
    try {  // shown, not trusted: the service checks the access token itself
      const claims = JSON.parse(atob(data.id_token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      auth.user = claims.name || claims.preferred_username || claims.sub;
    } catch (e) { /* keep the name shown so far */ }
  }
}

async function finishSignIn(params) {
  const saved = JSON.parse(sessionStorage.getItem("refracture-pkce") || "null");
  sessionStorage.removeItem("refracture-pkce");
  history.replaceState(null, "", location.pathname);  // the code must not stay in the address bar
  if (params.get("error")) throw new Error(params.get("error_description") || params.get("error"));
  if (!saved || saved.state !== params.get("state")) throw new Error("the sign-in answer does not match this page's request");
  await tokenRequest({ grant_type: "authorization_code", code: params.get("code"), redirect_uri: redirectUri(),
                       code_verifier: saved.verifier });
}

// A token valid for at least another 30 s: refreshed when it is not, else null (sign in again).
async function currentToken() {
  if (auth.accessToken && Date.now() < auth.expiresAt - 30000) return auth.accessToken;
  if (auth.refreshToken) {
    auth.refreshing = auth.refreshing || tokenRequest({ grant_type: "refresh_token", refresh_token: auth.refreshToken })
      .catch(() => { auth.accessToken = null; auth.refreshToken = null; })
      .finally(() => { auth.refreshing = null; });
    await auth.refreshing;
    if (auth.accessToken) return auth.accessToken;
  }
  auth.accessToken = null;
  showSignedIn();
  return null;
}

function signOut() {
  const c = auth.config;
  auth.accessToken = auth.refreshToken = auth.user = null;
  auth.expiresAt = 0;
  state.model = null;
  if (c.end_session_endpoint) {
    const params = new URLSearchParams({ client_id: c.client_id, post_logout_redirect_uri: redirectUri() });
    location.assign(c.end_session_endpoint + "?" + params.toString());
  } else {
    showSignedIn();
  }
}

function showSignedIn(message) {
  const signedIn = Boolean(auth.accessToken);
  $("#signin-status").textContent = message || (signedIn ? `Signed in as ${auth.user || "(unnamed user)"}.`
    : "Not signed in: sign in with your hospital account to estimate risks.");
  $("#sign-in").hidden = signedIn;
  $("#sign-out").hidden = !signedIn;
}

async function initAuth() {
  let config = { mode: "api-key" };
  try {
    const resp = await fetch("auth.json");
    config = await resp.json();
  } catch (e) { /* the embedded default */ }
  auth.config = config;
  if (config.mode !== "oidc") {
    $("#api-key-box").hidden = false;
    const key = sessionStorage.getItem("refracture-api-key");
    if (key) $("#api-key").value = key;
    $("#api-key").addEventListener("change", (e) => sessionStorage.setItem("refracture-api-key", e.target.value.trim()));
    return;
  }
  $("#signin-box").hidden = false;
  if (config.error) { showSignedIn("Sign-in is unavailable: " + config.error); $("#sign-in").hidden = true; return; }
  $("#sign-in").addEventListener("click", () => signIn().catch((e) => showSignedIn("Sign-in failed: " + e.message)));
  $("#sign-out").addEventListener("click", signOut);
  const params = new URLSearchParams(location.search);
  if (params.has("code") || params.has("error")) {
    try {
      await finishSignIn(params);
    } catch (e) {
      showSignedIn("Sign-in failed: " + e.message);
      return;
    }
  }
  showSignedIn();
}

// ---------------------------------------------------------------- API
// X-Refracture-Source: the prediction log stores the page's predictions as such; a what-if
// request (a changed copy of the record) says so and is not logged as a prediction.
async function authHeaders(extra) {
  const h = { "Content-Type": "application/json", Accept: "application/json", "X-Refracture-Source": "page" };
  if (auth.config && auth.config.mode === "oidc") {
    const token = await currentToken();
    if (token) h.Authorization = "Bearer " + token;
    return Object.assign(h, extra || {});
  }
  const key = $("#api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return Object.assign(h, extra || {});
}

async function call(path, body, extra) {
  const headers = await authHeaders(extra);
  const opts = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  const resp = await fetch(path, opts);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  return { status: resp.status, ok: resp.ok, data };
}

// Service base: the page lives at <base>/ui/.
const BASE = location.pathname.replace(/\/ui\/?.*$/, "");
// The body of /predict and /explain is the record itself (or a list of records).
const api = {
  explain: (record, months) => call(BASE + "/explain?horizon_months=" + encodeURIComponent(months), record),
  predict: (record, extra) => call(BASE + "/predict", record, extra),
  model: () => call(BASE + "/model"),
};

// Per-outcome results of the first record of a /predict or /explain response.
function outcomesOf(data) {
  const first = (data && data.predictions && data.predictions[0]) || {};
  return first.outcomes || {};
}

// Field errors of a 4xx response: [{record, field: "procedure.level", error, allowed}].
function fieldErrorsOf(data) {
  const list = (data && data.errors) || [];
  return Array.isArray(list) ? list : [];
}

// ---------------------------------------------------------------- form
function fieldId(name) { return "f-" + name; }

function buildForm(schema) {
  const root = $("#form-groups");
  root.textContent = "";
  for (const group of schema.groups) {
    const fs = document.createElement("fieldset");
    fs.id = "group-" + group.id;
    const legend = document.createElement("legend");
    legend.textContent = group.title;
    fs.appendChild(legend);
    const grid = document.createElement("div");
    grid.className = "grid";
    for (const f of group.fields) grid.appendChild(buildField(f));
    fs.appendChild(grid);
    root.appendChild(fs);
  }
}

function buildField(f) {
  const wrap = document.createElement("div");
  wrap.className = "field";
  wrap.dataset.path = f.path;
  const label = document.createElement("label");
  label.htmlFor = fieldId(f.name);
  label.textContent = f.label;
  if (f.unit) {
    const u = document.createElement("span");
    u.className = "unit";
    u.textContent = " (" + f.unit + ")";
    label.appendChild(u);
  }
  if (f.required) {
    const r = document.createElement("span");
    r.className = "req";
    r.textContent = " required";
    label.appendChild(r);
  }
  let input;
  if (f.allowed && f.allowed.length) {
    input = document.createElement("select");
    const blank = new Option(f.required ? "— choose —" : "not recorded", "");
    input.appendChild(blank);
    for (const v of f.allowed) {
      const text = f.kind === "binary" ? (v === "1" ? "yes" : "no") : v.replace(/_/g, " ");
      input.appendChild(new Option(text, v));
    }
  } else {
    input = document.createElement("input");
    input.type = f.kind === "date" ? "date" : "text";
    if (f.kind === "int" || f.kind === "float") {
      input.inputMode = "decimal";
      input.placeholder = f.min !== null && f.max !== null ? `${f.min}–${f.max}` : "";
    }
    input.autocomplete = "off";
  }
  input.id = fieldId(f.name);
  input.name = f.name;
  input.dataset.kind = f.kind;
  input.dataset.path = f.path;
  const help = document.createElement("small");
  help.id = "h-" + f.name;
  help.className = "help";
  help.textContent = f.help + (f.min !== null && f.max !== null && f.unit ? ` Allowed ${f.min}–${f.max} ${f.unit}.` : "");
  const err = document.createElement("span");
  err.id = "e-" + f.name;
  err.className = "error";
  err.setAttribute("role", "alert");
  input.setAttribute("aria-describedby", help.id + " " + err.id);
  wrap.append(label, input, help, err);
  return wrap;
}

function allFields() {
  return state.schema.groups.flatMap((g) => g.fields);
}

function readForm() {
  const record = { patient: {}, procedure: {}, imaging: { preop: {}, postop: {} } };
  for (const f of allFields()) {
    const raw = document.getElementById(fieldId(f.name)).value.trim();
    if (raw === "") continue;
    let value = raw;
    if (f.kind === "int" || f.kind === "float" || f.kind === "binary") {
      const n = Number(raw.replace(",", "."));
      value = Number.isFinite(n) ? n : raw; // the service names what it cannot read
    }
    setPath(record, f.path, value);
  }
  return record;
}

function setPath(obj, path, value) {
  const parts = path.split(".");
  let cur = obj;
  for (const p of parts.slice(0, -1)) cur = cur[p] = cur[p] || {};
  cur[parts[parts.length - 1]] = value;
}

function getPath(obj, path) {
  return path.split(".").reduce((cur, p) => (cur == null ? undefined : cur[p]), obj);
}

function fillForm(record) {
  clearErrors();
  for (const f of allFields()) {
    const v = getPath(record, f.path);
    document.getElementById(fieldId(f.name)).value = v === undefined || v === null ? "" : String(v);
  }
}

function clearErrors() {
  document.querySelectorAll(".field .error").forEach((e) => { e.textContent = ""; });
  document.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  $("#form-status").textContent = "";
}

function showFieldErrors(errors) {
  let first = null;
  const unplaced = [];
  for (const e of errors) {
    const path = (e.field || "").replace(/^records\.\d+\./, "").replace(/^\d+\./, "");
    const input = document.querySelector(`[data-path="${CSS.escape(path)}"]:is(input,select)`);
    const text = e.error + (e.allowed ? ` (allowed: ${e.allowed})` : "");
    if (input) {
      const err = document.getElementById("e-" + input.name);
      err.textContent = err.textContent ? err.textContent + "; " + text : text;
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    } else {
      unplaced.push(`${e.field}: ${text}`);
    }
  }
  $("#form-status").textContent = `Please correct ${errors.length} field(s).` + (unplaced.length ? " " + unplaced.join("; ") : "");
  if (first) first.focus();
}

// ---------------------------------------------------------------- results
const pct = (p) => (100 * p < 1 ? (100 * p).toFixed(1) : Math.round(100 * p)) + " %";
const logit = (p) => Math.log(p / (1 - p));
const expit = (x) => 1 / (1 + Math.exp(-x));

function metricText(m) {
  if (!m) return "";
  const ci = (name, digits) => {
    const v = m[name], lo = m[name + "_ci_low"], hi = m[name + "_ci_high"];
    if (v === undefined || v === null) return null;
    return `${v.toFixed(digits)}` + (lo !== undefined && hi !== undefined ? ` (95 % CI ${lo.toFixed(digits)}–${hi.toFixed(digits)})` : "");
  };
  const parts = [];
  const auroc = ci("auroc", 2);
  if (auroc) parts.push("AUROC " + auroc);
  const slope = ci("calibration_slope", 2);
  if (slope) parts.push("calibration slope " + slope);
  const icpt = ci("calibration_intercept", 2);
  if (icpt) parts.push("calibration intercept " + icpt);
  return parts.join(" · ");
}

const SVG_NS = "http://www.w3.org/2000/svg";

// An accessible inline SVG of W x H (role img, labelled) and el(tag, attrs, text), which
// appends a child element to it. Drawn here: the CSP allows no outside library.
function svgCanvas(W, H, cls, label) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", cls);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
  return { svg, el };
}

// The curve in words: "0.4 % by 3 months, 0.9 % by 6 months, ...", in horizon order.
function curveWords(curve) {
  return curvePoints(curve).map(([m, p]) => `${pct(p)} by ${m} months`).join(", ");
}

// [[months, probability], ...] sorted by months, from {"3": p, "6": p, ...}.
function curvePoints(curve) {
  return Object.entries(curve || {}).map(([m, p]) => [Number(m), p]).sort((a, b) => a[0] - b[0]);
}

// A small chart of the risk curve (inline SVG drawn here: no library, nothing fetched).
function curveChart(curve, outcomeName) {
  const pts = curvePoints(curve);
  const W = 340, H = 170, left = 46, right = 16, top = 14, bottom = 34;
  const maxMonths = Math.max(...pts.map((q) => q[0]));
  const maxP = Math.max(...pts.map((q) => q[1]));
  // A round top for the axis: the next of 1, 2, 5, 10, 20, 50 ... % above the curve.
  const steps = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1];
  const yMax = steps.find((v) => v >= maxP * 1.1) || 1;
  const X = (m) => left + (m / maxMonths) * (W - left - right);
  const Y = (p) => top + (1 - p / yMax) * (H - top - bottom);
  const { svg, el } = svgCanvas(W, H, "curve", `${outcomeName}: risk over time, ${curveWords(curve)}`);
  el("line", { x1: left, x2: W - right, y1: Y(0), y2: Y(0), class: "cv-axis" });
  el("line", { x1: left, x2: left, y1: top, y2: Y(0), class: "cv-axis" });
  for (const v of [0, yMax / 2, yMax]) {
    el("line", { x1: left - 3, x2: W - right, y1: Y(v), y2: Y(v), class: v ? "cv-grid" : "cv-axis" });
    el("text", { x: left - 6, y: Y(v) + 4, "text-anchor": "end", class: "cv-tick" }, v ? pct(v) : "0 %");
  }
  el("text", { x: X(0), y: H - 18, "text-anchor": "middle", class: "cv-tick" }, "0");
  for (const [m] of pts) el("text", { x: X(m), y: H - 18, "text-anchor": "middle", class: "cv-tick" }, String(m));
  el("text", { x: (left + W - right) / 2, y: H - 3, "text-anchor": "middle", class: "cv-tick" }, "months after surgery");
  // Known only at the horizons: straight segments between them, from 0 at surgery.
  const line = [[0, 0], ...pts].map(([m, p]) => `${X(m).toFixed(1)},${Y(p).toFixed(1)}`).join(" ");
  el("polyline", { points: line, class: "cv-line" });
  for (const [m, p] of pts) {
    const dot = el("circle", { cx: X(m), cy: Y(p), r: 3.5, class: "cv-point" });
    dot.dataset.months = String(m);
    dot.dataset.probability = String(p);
    const t = document.createElementNS(SVG_NS, "title");
    t.textContent = `${pct(p)} by ${m} months`;
    dot.appendChild(t);
  }
  const fig = document.createElement("figure");
  fig.className = "cv";
  fig.appendChild(svg);
  return fig;
}

// The optional context of a record: the probability of death (any cause) by 24 months,
// sent when the service has a death model (refracture-death); without one, nothing shows.
function renderContext(data) {
  const first = (data && data.predictions && data.predictions[0]) || {};
  const death = first.context && first.context.death;
  const box = $("#results-context");
  if (!death || typeof death.probability !== "number") {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const model = death.model ? ` (model ${death.model.name} version ${death.model.version})` : "";
  box.textContent = `For context: probability of death (any cause) by ${death.horizon_months} months: ` +
    `${pct(death.probability)}. Why it matters: a patient who dies first cannot have a fracture, and the ` +
    `fracture risks above already take that into account; a high probability of death also weighs on how ` +
    `much follow-up and treatment are worth${model}.`;
  box.dataset.probability = String(death.probability);
  box.hidden = false;
}

// Values the data contract finds implausible but possible: the record was scored with them
// as entered; the page names them so they can be checked (nothing shows when there are none).
function renderWarnings(data) {
  const first = (data && data.predictions && data.predictions[0]) || {};
  const warnings = Array.isArray(first.warnings) ? first.warnings : [];
  const box = $("#results-warnings");
  box.textContent = warnings.length
    ? "Please check (scored as entered): " + warnings.map((w) => `${w.field}: ${w.warning}`).join("; ")
    : "";
  box.hidden = warnings.length === 0;
}

function renderResults(data) {
  const outcomes = outcomesOf(data);
  const cards = $("#outcome-cards");
  cards.textContent = "";
  let explained = null;
  for (const [name, o] of Object.entries(outcomes)) {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.outcome = name;
    card.dataset.probability = String(o.probability);
    const h = document.createElement("h3");
    h.textContent = OUTCOME_NAMES[name] || name;
    const prob = document.createElement("p");
    prob.className = "probability";
    const big = document.createElement("strong");
    big.textContent = pct(o.probability);
    prob.append(big, ` within ${o.horizon_months} months`);
    const band = document.createElement("span");
    band.className = "band band-" + String(o.risk_band || "").toLowerCase();
    band.textContent = (o.risk_band || "") + " risk";
    prob.append(" ", band);
    const words = document.createElement("p");
    words.className = "curve-words";
    words.textContent = "Risk over time: " + curveWords(o.curve) + ".";
    const model = document.createElement("p");
    const info = (state.model && state.model.outcomes && state.model.outcomes[name]) || {};
    model.className = "meta model-info";
    model.textContent = `Model ${o.model.name} version ${o.model.version}. Held-out validation at ${o.horizon_months} months: ` + metricText(info.metrics);
    card.append(h, prob, words, curveChart(o.curve, OUTCOME_NAMES[name] || name), model);
    if (o.missing_inputs && o.missing_inputs.length) {
      const miss = document.createElement("p");
      miss.className = "meta missing";
      miss.textContent = "Missing inputs: " + o.missing_inputs.map((m) => `${m.field} (${m.handling})`).join("; ");
      card.appendChild(miss);
    }
    if (o.explanation) {
      card.appendChild(waterfall(o.explanation));
      explained = o.explanation.horizon_months;
    }
    cards.appendChild(card);
  }
  renderContext(data);
  renderWarnings(data);
  $("#results-meta").textContent = "Risk: the chance that the fracture happens by each time after surgery, counting " +
    "patients who die first as not having it." + (explained === null ? "" : ` Factors: each bar is the factor's ` +
    `contribution on the log-odds scale to the risk by ${explained} months, from the average risk (base) to this patient's.`);
  $("#results").hidden = false;
}

// SHAP waterfall as an accessible SVG plus a table-like list of the same numbers.
function waterfall(expl) {
  const probability = expl.probability, months = expl.horizon_months;
  const contribs = (expl.contributions || []).slice().sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution));
  const top = contribs.slice(0, 10);
  const rest = contribs.slice(10);
  const restSum = rest.reduce((s, c) => s + c.contribution, 0);
  const rows = top.map((c) => ({
    label: `${c.display_name} = ${c.value_text}`,
    value: c.contribution, feature: c.feature,
  }));
  if (rest.length) rows.push({ label: `${rest.length} other factors`, value: restSum, feature: "_other" });
  const base = expl.base_value;
  let cum = base;
  const steps = rows.map((r) => { const s = { ...r, start: cum, end: cum + r.value }; cum += r.value; return s; });
  const final = base + contribs.reduce((s, c) => s + c.contribution, 0);
  const xs = [base, final, ...steps.flatMap((s) => [s.start, s.end])];
  const lo = Math.min(...xs) - 0.2, hi = Math.max(...xs) + 0.2;
  const W = 820, labelW = 420, rowH = 22, top0 = 26, plotW = W - labelW - 70;
  const H = top0 + (steps.length + 2) * rowH + 30;
  const X = (v) => labelW + ((v - lo) / (hi - lo)) * plotW;
  const { svg, el } = svgCanvas(W, H, "waterfall",
    `Factors from the base risk ${pct(expit(base))} to this patient's ${pct(probability)} by ${months} months`);
  el("text", { x: 4, y: 16, class: "wf-title" }, `Base risk by ${months} months (average patient) ` + pct(expit(base)));
  steps.forEach((s, i) => {
    const y = top0 + i * rowH;
    el("text", { x: labelW - 6, y: y + 15, "text-anchor": "end", class: "wf-label" }, s.label);
    const x0 = X(Math.min(s.start, s.end)), x1 = X(Math.max(s.start, s.end));
    const bar = el("rect", { x: x0, y: y + 3, width: Math.max(1, x1 - x0), height: rowH - 6,
      class: s.value >= 0 ? "wf-up" : "wf-down" });
    bar.dataset.feature = s.feature;
    bar.dataset.contribution = String(s.value);
    el("text", { x: x1 + 4, y: y + 15, class: "wf-num" }, (s.value >= 0 ? "+" : "−") + Math.abs(s.value).toFixed(2));
  });
  const yEnd = top0 + steps.length * rowH;
  el("line", { x1: X(base), x2: X(base), y1: top0, y2: yEnd, class: "wf-base" });
  el("line", { x1: X(final), x2: X(final), y1: top0, y2: yEnd + 8, class: "wf-final" });
  el("text", { x: 4, y: yEnd + 22, class: "wf-title wf-result" }, `This patient ${pct(probability)} by ${months} months`);
  for (const p of [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7]) {
    const v = logit(p);
    if (v < lo || v > hi) continue;
    el("text", { x: X(v), y: H - 4, "text-anchor": "middle", class: "wf-tick" }, pct(p));
  }
  const fig = document.createElement("figure");
  fig.className = "wf";
  fig.dataset.baseValue = String(base);
  fig.dataset.horizonMonths = String(months);
  fig.dataset.finalLogit = String(final);
  fig.appendChild(svg);
  const cap = document.createElement("figcaption");
  const ups = (expl.raising || []).map(plainFactor).join("; ");
  const downs = (expl.lowering || []).map(plainFactor).join("; ");
  cap.textContent = `Why the risk by ${months} months is what it is. ` + (ups ? "Raising risk: " + ups + ". " : "") +
    (downs ? "Lowering risk: " + downs + "." : "");
  fig.appendChild(cap);
  return fig;
}

function plainFactor(f) { return typeof f === "string" ? f : (f.text || f.feature); }

// ---------------------------------------------------------------- what-if
function buildWhatIf(schema, record) {
  const root = $("#what-if-controls");
  root.textContent = "";
  for (const item of schema.what_if) {
    const wrap = document.createElement("div");
    wrap.className = "field";
    const id = "w-" + item.id;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = item.label + (item.unit ? ` (${item.unit})` : "");
    let input;
    const current = getPath(record, item.paths[0]);
    if (item.kind === "binary") {
      input = document.createElement("select");
      input.append(new Option("no", "0"), new Option("yes", "1"));
      const both = item.paths.every((p) => Number(getPath(record, p)) === 1);
      input.value = both ? "1" : "0";
    } else if (item.kind === "category") {
      input = document.createElement("select");
      for (const v of item.allowed) input.appendChild(new Option(v.replace(/_/g, " "), v));
      input.value = current || "none";
    } else {
      input = document.createElement("input");
      input.type = "number";
      input.step = "0.1";
      input.min = item.min;
      input.max = item.max;
      input.value = current === undefined || current === null ? "" : current;
    }
    input.id = id;
    input.dataset.item = item.id;
    wrap.append(label, input);
    root.appendChild(wrap);
  }
  $("#what-if").hidden = false;
  $("#what-if-table").hidden = true;
}

function whatIfRecord() {
  const rec = structuredClone(state.record);
  for (const item of state.schema.what_if) {
    const v = document.getElementById("w-" + item.id).value;
    if (v === "") continue;
    for (const p of item.paths) setPath(rec, p, item.kind === "category" ? v : Number(v));
  }
  return rec;
}

async function runWhatIf() {
  const after = await api.predict(whatIfRecord(), { "X-Refracture-Purpose": "what-if" });
  const tbody = $("#what-if-table tbody");
  tbody.textContent = "";
  if (!after.ok) {
    $("#form-status").textContent = "What-if request failed: " + (fieldErrorsOf(after.data).map((e) => `${e.field}: ${e.error}`).join("; ") || after.status);
    return;
  }
  const before = outcomesOf(state.results);
  const headline = Object.values(before).map((o) => o.horizon_months)[0] || HEADLINE_MONTHS;
  $("#what-if-table caption").textContent = `Risk by ${headline} months, before and after the change (association, not a causal effect)`;
  for (const [name, o] of Object.entries(outcomesOf(after.data))) {
    const b = before[name] ? before[name].probability : null;
    const tr = document.createElement("tr");
    tr.dataset.outcome = name;
    tr.dataset.before = String(b);
    tr.dataset.after = String(o.probability);
    const diff = b === null ? "" : ((o.probability - b) * 100 >= 0 ? "+" : "−") + Math.abs((o.probability - b) * 100).toFixed(1) + " points";
    for (const text of [OUTCOME_NAMES[name] || name, b === null ? "–" : pct(b), pct(o.probability), diff]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  $("#what-if-table").hidden = false;
}

// ---------------------------------------------------------------- wiring
async function submit(ev) {
  ev.preventDefault();
  clearErrors();
  const record = readForm();
  $("#form-status").textContent = "Estimating…";
  const resp = await api.explain(record, $("#explain-horizon").value || HEADLINE_MONTHS);
  if (resp.status === 401 || resp.status === 403) {
    if (auth.config && auth.config.mode === "oidc") {
      $("#form-status").textContent = resp.status === 403
        ? "Your account may not use this service (ask for access)." : "Not signed in, or the sign-in has expired: sign in again.";
      $("#sign-in").hidden ? $("#sign-out").focus() : $("#sign-in").focus();
    } else {
      $("#form-status").textContent = "Not authorised: enter the API key (or sign in through your hospital's portal).";
      $("#api-key").focus();
    }
    return;
  }
  if (!resp.ok) {
    const errors = fieldErrorsOf(resp.data);
    if (errors.length) showFieldErrors(errors);
    else $("#form-status").textContent = `The service could not answer (HTTP ${resp.status}).`;
    return;
  }
  if (!state.model) await loadModelInfo();
  state.record = record;
  state.results = resp.data;
  renderResults(resp.data);
  buildWhatIf(state.schema, record);
  $("#form-status").textContent = "Done.";
  $("#results-title").focus();
}

// GET /model (scope model:read): metrics for the cards and the served horizons for the selector.
async function loadModelInfo() {
  try {
    const m = await api.model();
    if (m.ok) state.model = m.data;
  } catch (e) { /* the page still works without it: default horizons, no metrics */ }
}

function buildHorizonSelect() {
  const sel = $("#explain-horizon");
  const horizons = (state.model && state.model.horizons_months) || DEFAULT_HORIZONS;
  sel.textContent = "";
  for (const m of horizons) sel.appendChild(new Option(`${m} months`, String(m)));
  sel.value = String(HEADLINE_MONTHS);
}

async function init() {
  await initAuth();
  $("#results-title").tabIndex = -1;
  const form = await (await fetch("form.json")).json();
  state.schema = form;
  buildForm(form);
  $("#record-form").addEventListener("submit", submit);
  await loadModelInfo();
  buildHorizonSelect();
  // A new horizon re-explains the record shown (the curve itself does not change).
  $("#explain-horizon").addEventListener("change", () => {
    if (state.results) $("#record-form").requestSubmit();
  });
  $("#what-if-run").addEventListener("click", runWhatIf);
  $("#load-json").addEventListener("click", () => {
    $("#json-error").textContent = "";
    try {
      const parsed = JSON.parse($("#json-input").value);
      fillForm(Array.isArray(parsed) ? parsed[0] : parsed.records ? parsed.records[0] : parsed);
    } catch (e) {
      $("#json-error").textContent = "Not valid JSON: " + e.message;
    }
  });
  $("#load-example").addEventListener("click", () => {
    const ex = state.examples[Number($("#example-select").value)];
    if (ex) fillForm(ex.record);
  });
  try {
    state.examples = await (await fetch("examples.json")).json();
    const sel = $("#example-select");
    sel.textContent = "";
    state.examples.forEach((ex, i) => sel.appendChild(new Option(ex.label, String(i))));
  } catch (e) {
    $("#example-select").textContent = "";
  }
}

document.addEventListener("DOMContentLoaded", init);
