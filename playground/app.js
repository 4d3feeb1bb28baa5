// The playground page: editors in, phi-guard's core (WebAssembly) in the middle, results out.
// Every decision comes from the core; this file only reads the editors, calls it and shows what
// it returns. The buttons call `window.phiGuard`, the same functions the browser test calls.

import init, * as core from "./pkg/phi_guard_playground.js";
import { diffLines, hunks, prettyJson } from "./diff.js";
import { lineColumn, locate } from "./locate.js";

const $ = (id) => document.getElementById(id);

/** The page's interface to the core: JSON text in and out, as `phi-guard explain --json`. */
const api = {
  /** Compile policy text: the JSON text of `{ok, policy}` or `{ok: false, error, location}`. */
  compileJson: (text) => core.compilePolicy(text),
  /** Run an exchange described as JSON text: the JSON text of `{ok, outcome}` or `{ok: false, field, error}`. */
  explainJson: (input) => core.explain(input),
  /** `compileJson`, parsed. */
  compile: (text) => JSON.parse(core.compilePolicy(text)),
  /** `explainJson` on an object, parsed. */
  explain: (input) => JSON.parse(core.explain(JSON.stringify(input))),
  /** The core's version. */
  version: () => core.version(),
  /** Resolves when the example last chosen in a dropdown is in the editors. */
  idle: () => pending,
  diffLines,
  locate,
};

let catalog = { policies: [], invalidPolicies: [], fhir: [], presets: [], jwks: null };
let lastCompileError = null;
let pending = Promise.resolve();

// Loaded files are kept: switching examples back and forth should not refetch.
const files = new Map();
async function load(file) {
  if (!files.has(file)) {
    const res = await fetch(`examples/${file}`);
    if (!res.ok) throw new Error(`examples/${file}: HTTP ${res.status}`);
    files.set(file, await res.text());
  }
  return files.get(file);
}

function option(select, value, text, group) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  (group || select).appendChild(o);
}

function optgroup(select, label) {
  const g = document.createElement("optgroup");
  g.label = label;
  select.appendChild(g);
  return g;
}

function setStatus(state, text) {
  const s = $("wasm-status");
  s.dataset.state = state;
  s.textContent = text;
}

// ---- policy -------------------------------------------------------------------------------

function compilePolicy() {
  const r = api.compile($("policy").value);
  $("compile-result").hidden = false;
  $("compile-ok").hidden = !r.ok;
  $("compile-error").hidden = r.ok;
  $("policy").classList.toggle("invalid", !r.ok);
  lastCompileError = r.ok ? null : r;
  if (r.ok) {
    const p = r.policy;
    $("policy-name").textContent = p.name;
    $("policy-revision").textContent = p.revision;
    $("policy-mode").textContent = p.mode;
    $("policy-route-count").textContent = String(p.routes.length);
    const body = $("policy-routes").tBodies[0];
    body.replaceChildren();
    for (const route of p.routes) {
      const tr = body.insertRow();
      for (const v of [route.id, route.match, route.methods.join(" "), route.access, route.profiles.join(", ") || "—"]) {
        tr.insertCell().textContent = v;
      }
    }
  } else {
    $("compile-error-location").textContent = r.location;
    $("compile-error-message").textContent = r.error;
  }
  return r;
}

// Select the offending value (or the syntax error's line and column) in the policy editor.
function gotoError() {
  if (!lastCompileError) return;
  const area = $("policy");
  const text = area.value;
  const span = lineColumn(text, lastCompileError.message) || locate(text, lastCompileError.location);
  if (!span) return;
  area.focus();
  area.setSelectionRange(span.start, span.end);
  const line = text.slice(0, span.start).split("\n").length - 1;
  const lineHeight = parseFloat(getComputedStyle(area).lineHeight) || 16;
  area.scrollTop = Math.max(0, (line - 3) * lineHeight);
}

// ---- request ------------------------------------------------------------------------------

function credentialMode() {
  return document.querySelector('input[name="cred"]:checked').value;
}

function showCredential() {
  const mode = credentialMode();
  $("claims-box").hidden = mode !== "claims";
  $("token-box").hidden = mode !== "token";
  $("header-box").hidden = mode !== "header";
}

function nowSeconds() {
  return Math.floor(Date.now() / 1000);
}

function readNow() {
  const field = $("now");
  if (field.value.trim() === "") field.value = String(nowSeconds());
  const n = Number(field.value);
  if (!Number.isSafeInteger(n) || n < 0) throw Object.assign(new Error("now: a whole number of seconds since 1970"), { field: "now" });
  return n;
}

// `now+N` / `now-N` claim strings become times relative to the page's clock, as in the scenarios.
function resolveTimes(value, now) {
  if (typeof value === "string") {
    const m = /^now([+-])(\d+)$/.exec(value);
    return m ? now + (m[1] === "+" ? 1 : -1) * Number(m[2]) : value;
  }
  if (Array.isArray(value)) return value.map((v) => resolveTimes(v, now));
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolveTimes(v, now)]));
  return value;
}

function decodeToken() {
  const parts = $("token").value.trim().split(".");
  const b64 = (s) => {
    const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(s.length / 4) * 4, "="));
    return new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
  };
  try {
    if (parts.length !== 3) throw new Error("not a compact JWS (three dot-separated parts)");
    const header = JSON.parse(b64(parts[0]));
    const payload = JSON.parse(b64(parts[1]));
    $("token-decoded").textContent = JSON.stringify({ header, payload }, null, 2);
  } catch (e) {
    $("token-decoded").textContent = parts.join("") === "" ? "" : `cannot decode: ${e.message}`;
  }
}

/** The exchange the editors describe, as the core's input (the upstream only for a run). */
function readInput(withUpstream) {
  const input = {
    policy: $("policy").value,
    method: $("method").value,
    path: $("path").value,
    now: readNow(),
  };
  const requestId = $("request-id").value.trim();
  if (requestId) input.requestId = requestId;
  const mode = credentialMode();
  if (mode === "claims") input.claims = $("claims").value;
  if (mode === "token") {
    input.token = $("token").value.trim();
    if (input.token === "") throw Object.assign(new Error("token: paste a compact JWS, or choose another credential"), { field: "token" });
    if ($("jwks").value.trim()) input.jwks = $("jwks").value;
    if ($("dpop").value.trim()) input.dpop = $("dpop").value.trim();
    if ($("origin").value.trim()) input.origin = $("origin").value.trim();
    if ($("client-cert").value.trim()) input.clientCertSha256 = $("client-cert").value.trim();
    if ($("introspection").value.trim()) input.introspection = $("introspection").value;
  }
  if (mode === "header") input.authorization = $("authorization").value;
  if ($("audit-key").value !== "") input.auditKey = $("audit-key").value;
  if ($("hmac-key").value !== "") input.hmacKey = $("hmac-key").value;
  if (withUpstream) {
    const status = Number($("upstream-status").value);
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      throw Object.assign(new Error("upstream status: a number from 100 to 599"), { field: "upstreamStatus" });
    }
    input.upstream = {
      status,
      contentType: $("upstream-content-type").value,
      body: $("upstream-body").value,
    };
  }
  return input;
}

// ---- results ------------------------------------------------------------------------------

const EDITORS = { policy: "policy", claims: "claims", token: "token", jwks: "jwks", introspection: "introspection", origin: "origin", auditKey: "audit-key", now: "now", upstreamStatus: "upstream-status" };

function showError(field, message) {
  for (const id of Object.values(EDITORS)) $(id).classList.remove("invalid");
  $("result").hidden = true;
  const box = $("error");
  box.hidden = false;
  box.dataset.field = field;
  // The core's messages name their input already, except the policy's located errors.
  box.textContent = field === "policy" ? `policy: ${message}` : message;
  if (EDITORS[field]) $(EDITORS[field]).classList.add("invalid");
  if (field === "policy") compilePolicy();
}

function text(id, value) {
  $(id).textContent = value === undefined || value === null || value === "" ? "—" : String(value);
}

function showOutcome(o, upstream) {
  for (const id of Object.values(EDITORS)) $(id).classList.remove("invalid");
  $("error").hidden = true;
  $("result").hidden = false;
  const refused = o.reason !== undefined;
  const decision = $("decision");
  decision.textContent = o.decision.toUpperCase();
  decision.className = `badge ${o.decision === "allow" && !refused ? "ok" : "bad"}`;
  $("result").dataset.decision = o.decision;
  text("status", o.status ?? (o.decision === "allow" ? "forwarded to the upstream" : null));
  $("reason").textContent = o.reason ?? "";
  $("message").textContent = o.message ?? "";
  $("phase").textContent = o.phase ? `(${o.phase} phase)` : "";
  $("enforced").textContent = o.enforced ? "" : "shadow mode: not enforced";
  text("route", o.route);
  text("fhir", o.fhir && [o.fhir.interaction, o.fhir.resourceType].filter(Boolean).join(" "));
  text("caller", o.caller && [o.caller.issuer, o.caller.subject && `sub ${o.caller.subject}`, o.caller.clientId && `client ${o.caller.clientId}`,
    o.caller.patient && `patient ${o.caller.patient}`, `scopes: ${o.caller.scopes.join(" ") || "none"}`].filter(Boolean).join(" · "));
  text("needs", o.needs && [o.needs.scope && `scope ${o.needs.scope}`, o.needs.acrValues && `acr ${o.needs.acrValues}`,
    o.needs.maxAge !== undefined && `max_age ${o.needs.maxAge}`].filter(Boolean).join(" · "));
  text("www-authenticate", o.wwwAuthenticate);
  text("profile", o.profile);
  $("withheld-count").textContent = String(o.withheldCount);
  $("withheld").replaceChildren(...o.withheld.map((p) => {
    const li = document.createElement("li");
    const c = document.createElement("code");
    c.textContent = p;
    li.appendChild(c);
    return li;
  }));
  text("content-digest", o.contentDigest);
  $("body").textContent = o.body === undefined ? "(no body: the request goes on to the upstream)" : prettyJson(o.body);
  $("audit").textContent = JSON.stringify(o.audit, null, 2);
  $("audit-fhir-box").hidden = o.auditFhir === undefined;
  $("audit-fhir").textContent = o.auditFhir === undefined ? "" : JSON.stringify(o.auditFhir, null, 2);
  $("outcome-json").textContent = JSON.stringify(o, null, 2);
  showDiff(o, upstream);
}

function showDiff(o, upstream) {
  const box = $("diff");
  box.replaceChildren();
  const summary = $("diff-summary");
  if (!upstream) {
    summary.textContent = "(Explain decides the request only: run the exchange to see the response phase)";
    return;
  }
  if (o.decision === "deny" && o.phase === "request" && o.enforced) {
    summary.textContent = "(refused before the upstream: the client gets the refusal body below)";
    return;
  }
  const a = prettyJson(upstream.body).split("\n");
  const b = prettyJson(o.body ?? "").split("\n");
  const ops = diffLines(a, b);
  if (ops === null) {
    summary.textContent = "(too many changed lines for a line diff: compare the bodies below)";
    return;
  }
  const removed = ops.filter((x) => x.op === "-").length;
  const added = ops.filter((x) => x.op === "+").length;
  summary.textContent = removed || added ? `−${removed} +${added} lines` : "(released unchanged)";
  const { hunks: parts, skippedAfter } = hunks(ops, 3);
  const skipped = (n) => {
    const d = document.createElement("div");
    d.className = "skip";
    d.textContent = `⋯ ${n} unchanged line${n === 1 ? "" : "s"}`;
    return d;
  };
  for (const h of parts) {
    if (h.skippedBefore) box.appendChild(skipped(h.skippedBefore));
    for (const op of h.ops) {
      const line = document.createElement("div");
      line.className = { "=": "ctx", "-": "del", "+": "add" }[op.op];
      const num = document.createElement("span");
      num.className = "ln";
      num.textContent = op.op === "+" ? `${op.b + 1}` : `${op.a + 1}`;
      const sign = document.createElement("span");
      sign.className = "sign";
      sign.textContent = op.op === "=" ? " " : op.op === "-" ? "−" : "+";
      const code = document.createElement("code");
      code.textContent = op.text;
      line.append(num, sign, code);
      box.appendChild(line);
    }
  }
  if (skippedAfter && parts.length) box.appendChild(skipped(skippedAfter));
}

function run(withUpstream) {
  let input;
  try {
    input = readInput(withUpstream);
  } catch (e) {
    showError(e.field || "input", e.message);
    return null;
  }
  let r;
  try {
    r = api.explain(input);
  } catch (e) {
    // The core returns its errors as JSON; an exception here is a bug (or a trap) in the core.
    showError("core", `the core failed: ${e.message}`);
    return null;
  }
  if (r.ok) showOutcome(r.outcome, input.upstream);
  else showError(r.field, r.error);
  return r;
}

// ---- examples -----------------------------------------------------------------------------

async function loadPolicy(file) {
  $("policy").value = await load(file);
  $("policy-example").value = file;
  compilePolicy();
}

async function loadBody(file) {
  $("upstream-body").value = await load(file);
  $("fhir-example").value = file;
}

async function loadPreset(id) {
  const p = catalog.presets.find((x) => x.id === id);
  if (!p) return;
  $("preset").value = id;
  await loadPolicy(p.policy);
  $("method").value = p.method;
  $("path").value = p.path;
  const now = nowSeconds();
  $("now").value = String(now);
  $(p.claims ? "cred-claims" : "cred-none").checked = true;
  $("claims").value = p.claims ? JSON.stringify(resolveTimes(p.claims, now), null, 2) : "";
  showCredential();
  // Presets whose profile pseudonymizes or hashes carry the demo key, as the demo Envoy does.
  $("hmac-key").value = p.hmacKey ?? "";
  if (p.body) await loadBody(p.body);
  $("upstream-status").value = "200";
}

async function start() {
  await init();
  window.phiGuard = api;
  $("core-version").textContent = core.version();
  $("audit-key").value = core.demoAuditKey();
  catalog = JSON.parse(await load("index.json"));
  const policies = $("policy-example");
  const valid = optgroup(policies, "Example policies");
  for (const p of catalog.policies) option(policies, p.file, p.label, valid);
  const invalid = optgroup(policies, "Invalid examples (see the located error)");
  for (const p of catalog.invalidPolicies) option(policies, p.file, p.label, invalid);
  const groups = new Map();
  for (const f of catalog.fhir) {
    if (!groups.has(f.group)) groups.set(f.group, optgroup($("fhir-example"), f.group));
    option($("fhir-example"), f.file, f.label, groups.get(f.group));
  }
  for (const p of catalog.presets) option($("preset"), p.id, p.label);

  $("compile").addEventListener("click", compilePolicy);
  $("goto-error").addEventListener("click", gotoError);
  let timer = null;
  $("policy").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(compilePolicy, 300);
  });
  $("policy-example").addEventListener("change", (e) => (pending = loadPolicy(e.target.value)));
  $("fhir-example").addEventListener("change", (e) => (pending = loadBody(e.target.value)));
  $("preset").addEventListener("change", (e) => (pending = loadPreset(e.target.value)));
  for (const r of document.querySelectorAll('input[name="cred"]')) r.addEventListener("change", showCredential);
  $("token").addEventListener("input", decodeToken);
  $("load-demo-jwks").addEventListener("click", () => {
    pending = load(catalog.jwks).then((t) => ($("jwks").value = t));
  });
  $("now-reset").addEventListener("click", () => {
    $("now").value = String(nowSeconds());
  });
  $("explain").addEventListener("click", () => run(false));
  $("run").addEventListener("click", () => run(true));

  await loadPreset(catalog.presets[0].id);
  setStatus("ready", `Ready: phi-guard core ${core.version()} (WebAssembly, in this tab).`);
}

/** Resolves once the core is loaded and the examples are in the editors. */
window.phiGuardReady = start().catch((e) => {
  setStatus("failed", `The core did not load: ${e.message}. Build it with \`make playground\`.`);
  throw e;
});
