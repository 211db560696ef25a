// logferry console: one ES module, no framework, no build step, no external assets.
// Every page is drawn from the management API with the token kept in sessionStorage (gone when
// the tab closes), so the console can never show more than the token may read. All data goes
// into the page through textContent, never as HTML.

const TOKEN_KEY = "logferry.token";
const main = document.getElementById("main");
const live = document.getElementById("live");
let refreshTimer = null;
let quietRender = false; // auto-refresh redraws without moving keyboard focus
// Each route() aborts the previous one's reads: a slow page (or an auto-refresh in flight) that
// answers after the user moved on must not draw over the newer page.
let routeReads = new AbortController();
class Superseded extends Error {}

// ---------------------------------------------------------------- small DOM helpers

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function announce(message) {
  live.textContent = "";
  setTimeout(() => { live.textContent = message; }, 30);
}

function show(title, ...content) {
  document.title = `${title} · logferry console`;
  main.replaceChildren(h("h1", { text: title }), ...content.filter((c) => c !== null && c !== undefined && c !== false));
  if (!quietRender) main.focus();
}

function errorBox(message, fix) {
  return h("div", { class: "alert", role: "alert" },
    h("strong", { text: "Error: " }), message, fix ? h("span", { class: "fix", text: `Fix: ${fix}` }) : null);
}

function fmt(n) { return typeof n === "number" ? n.toLocaleString("en-US") : (n ?? "—"); }

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body) {
    const detail = body && (body.error || (Array.isArray(body.detail)
      ? body.detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("; ")
      : body.detail));
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.fix = body && (body.fix || (Array.isArray(body.detail) && body.detail[0] && body.detail[0].fix));
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reads = routeReads.signal;
  // Only reads are cancelled: a write the user started runs to its end, its answer just is not drawn.
  const signal = method === "GET" ? reads : undefined;
  let text;
  let response;
  try {
    response = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
    text = await response.text();
  } catch (error) {
    if (reads.aborted) throw new Superseded();
    throw error;
  }
  if (reads.aborted) throw new Superseded();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------- copy / download

async function copyText(text, what) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = h("textarea", { "aria-hidden": "true", class: "offscreen" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  announce(`${what} copied to the clipboard`);
}

function copyButton(text, what) {
  return h("button", { type: "button", class: "secondary", onclick: () => copyText(text, what) }, `Copy ${what}`);
}

function downloadLink(text, filename, label, type = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  return h("a", { class: "button secondary", href: url, download: filename }, label);
}

function docBlock(id, title, hint, text, extra = []) {
  return h("section", { class: "doc", "aria-labelledby": `${id}-h` },
    h("div", { class: "doc-head" }, h("h3", { id: `${id}-h`, text: title }),
      h("div", { class: "actions" }, copyButton(text, /^[A-Z][a-z]/.test(title) ? title[0].toLowerCase() + title.slice(1) : title), ...extra)),
    hint ? h("p", { class: "hint", text: hint }) : null,
    h("pre", { id, tabindex: "0" }, h("code", { text })));
}

// ---------------------------------------------------------------- sign in

function signInPage(message) {
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, "aria-describedby": "token-hint" });
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        const who = await api("GET", "/v1/whoami");
        sessionStorage.setItem("logferry.who", JSON.stringify(who));
        go(who.admin ? "#/admin" : `#/c/${enc(who.customer_id)}`);
      } catch (error) {
        sessionStorage.removeItem(TOKEN_KEY);
        form.after(errorBox(error.message, "Use a customer token from `logferry admin tokens create CUSTOMER`, or the admin token."));
      }
    },
  },
  h("label", { for: "token", text: "API token" }),
  h("p", { id: "token-hint", class: "hint", text: "Your customer token (or the vendor's admin token). It is kept only in this browser tab." }),
  input,
  h("div", { class: "actions" }, h("button", { type: "submit", id: "signin" }, "Sign in")));
  show("Sign in", message ? errorBox(message) : null, form);
}

// Setting a new hash fires hashchange, which routes; route directly only when the hash stays.
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function who() {
  try { return JSON.parse(sessionStorage.getItem("logferry.who") || "null"); } catch { return null; }
}

function header() {
  const me = who();
  document.getElementById("who").textContent = me ? (me.admin ? "Admin" : `Customer ${me.customer_id}`) : "";
  document.getElementById("signout").hidden = !me;
}

// ---------------------------------------------------------------- customer home

async function customerPage(customer) {
  const [info, endpoints] = await Promise.all([
    api("GET", `/v1/customers/${enc(customer)}`),
    api("GET", `/v1/customers/${enc(customer)}/endpoints`),
  ]);
  const rows = await Promise.all(endpoints.map(async (ep) => {
    let status = {};
    try { status = await api("GET", `/v1/customers/${enc(customer)}/endpoints/${enc(ep.name)}/status`); } catch { /* shown as unknown */ }
    return h("tr", {},
      h("td", {}, h("a", { href: `#/c/${enc(customer)}/e/${enc(ep.name)}` }, ep.name)),
      h("td", { text: ep.type }),
      h("td", {}, stateBadge(status.state)),
      h("td", { class: "num", text: fmt(status.lines && status.lines.delivered) }),
      h("td", { class: "num", text: fmt(status.lines && status.lines.pending) }));
  }));
  show(`Customer ${customer}`,
    h("dl", { class: "kv" },
      h("dt", { text: "Vendor AWS account" }), h("dd", { id: "vendor-account", text: info.vendor_account }),
      h("dt", { text: "Your external ID" }), h("dd", { id: "external-id", text: info.external_id })),
    h("div", { class: "actions" }, h("a", { class: "button", href: `#/c/${enc(customer)}/setup` }, "Set up a new endpoint")),
    h("h2", { text: "Endpoints" }),
    rows.length ? h("div", { class: "table-wrap" }, h("table", {},
      h("caption", { class: "visually-hidden", text: "Your endpoints" }),
      h("thead", {}, h("tr", {}, h("th", { text: "Name" }), h("th", { text: "Type" }), h("th", { text: "State" }),
        h("th", { class: "num", text: "Delivered lines" }), h("th", { class: "num", text: "Pending lines" }))),
      h("tbody", {}, rows))) : h("p", { text: "No endpoints yet." }));
}

function stateBadge(state) {
  return h("span", { class: `state state-${state || "unknown"}`, text: state || "unknown" });
}

// ---------------------------------------------------------------- setup wizard

function field(id, label, hint, attrs = {}) {
  return h("div", { id: `${id}-field` },
    h("label", { for: id, text: label }),
    hint ? h("p", { class: "hint", id: `${id}-hint`, text: hint }) : null,
    h("input", { id, name: id, type: "text", "aria-describedby": hint ? `${id}-hint` : null, autocomplete: "off", spellcheck: "false", ...attrs }));
}

async function setupPage(customer) {
  const info = await api("GET", `/v1/customers/${enc(customer)}`);
  const docs = h("div", { id: "documents" });
  const result = h("div", { id: "verify-result" });
  const value = (id) => document.getElementById(id).value.trim();
  const kind = () => document.querySelector("input[name=kind]:checked").value;

  const syncKind = () => {
    const k = kind();
    for (const id of ["bucket", "prefix", "region"]) document.getElementById(`${id}-field`).hidden = k !== "s3";
    document.getElementById("stream_arn-field").hidden = k !== "kinesis";
    document.getElementById("bucket").required = k === "s3";
    document.getElementById("stream_arn").required = k === "kinesis";
  };

  const showDocuments = async (event) => {
    event.preventDefault();
    const query = new URLSearchParams({ for: kind() });
    if (kind() === "s3") { query.set("bucket", value("bucket")); query.set("prefix", value("prefix")); }
    else query.set("stream_arn", value("stream_arn"));
    if (value("role_name")) query.set("role_name", value("role_name"));
    docs.replaceChildren(h("p", { text: "Generating the documents…" }));
    try {
      const p = await api("GET", `/v1/customers/${enc(customer)}/policies?${query}`);
      renderDocuments(p);
      document.getElementById("step2-h").focus();
    } catch (error) {
      docs.replaceChildren(errorBox(error.message, error.fix));
    }
  };

  const renderDocuments = (p) => {
    const json = (doc) => JSON.stringify(doc, null, 2);
    const blocks = [
      h("h2", { id: "step2-h", tabindex: "-1", text: "2. Create the role in your AWS account" }),
      h("p", { text: `For ${p.destination}. Use the AWS console with the documents below, or one of the scripts.` }),
      h("dl", { class: "kv" },
        h("dt", { text: "Vendor AWS account" }), h("dd", {}, h("code", { id: "doc-vendor", text: p.vendor_account }), " ", copyButton(p.vendor_account, "account ID")),
        h("dt", { text: "External ID" }), h("dd", {}, h("code", { id: "doc-external-id", text: p.external_id }), " ", copyButton(p.external_id, "external ID")),
        h("dt", { text: "Role name" }), h("dd", {}, h("code", { text: p.role_name }))),
      docBlock("trust-policy", "Trust policy", "IAM › Roles › Create role › Custom trust policy", json(p.policies.trust_policy)),
      docBlock("permission-policy", "Permission policy", "IAM › Policies › Create policy › JSON; then attach it to the role", json(p.policies.permission_policy)),
    ];
    if (p.policies.resource_policy) {
      blocks.push(docBlock("resource-policy", "Stream resource policy", "Optional: Kinesis › Data streams › the stream › Data stream sharing", json(p.policies.resource_policy)));
    }
    blocks.push(
      docBlock("cli-script", "AWS CLI script", "Run with credentials of your account (bash).", p.cli_script,
        [downloadLink(p.cli_script, "logferry-role.sh", "Download script", "text/x-shellscript")]),
      docBlock("cloudformation", "CloudFormation template", "aws cloudformation deploy --capabilities CAPABILITY_NAMED_IAM --template-file logferry-role.json --stack-name logferry-role", json(p.cloudformation),
        [downloadLink(json(p.cloudformation), "logferry-role.json", "Download template")]),
      docBlock("terraform", "Terraform", "main.tf: terraform init && terraform apply", p.terraform,
        [downloadLink(p.terraform, "main.tf", "Download main.tf", "text/plain")]),
      h("h3", { text: "Activate STS in the vendor's regions" }),
      h("p", { class: "hint", text: "IAM › Account settings › Security Token Service (STS) › Endpoints: make sure each region is Active." }),
      h("ul", { class: "sts", id: "sts-checklist" }, p.sts_regions.map((r) => h("li", {},
        h("label", {}, h("input", { type: "checkbox", checked: r.always_active, disabled: r.always_active }),
          r.always_active ? `${r.region}: always active` : `${r.region}: activate STS`),
        r.always_active ? null : [" ", h("a", { href: r.console_url, target: "_blank", rel: "noopener noreferrer" }, `IAM Account settings (${r.region})`)]))),
      h("h2", { text: "3. Verify the role and create the endpoint" }),
      h("form", { id: "verify-form", onsubmit: verifyAndCreate },
        field("role_arn", "Role ARN", "The ARN of the role you created, e.g. arn:aws:iam::123456789012:role/" + p.role_name, { required: true }),
        h("div", { class: "actions" }, h("button", { type: "submit", id: "verify" }, "Verify and create"))),
      result);
    docs.replaceChildren(...blocks);
  };

  const endpointBody = () => {
    const body = { type: kind(), iam_role: value("role_arn") };
    if (kind() === "s3") {
      body.bucket_name = value("bucket");
      body.path = value("prefix");
      if (value("region")) body.region = value("region");
    } else {
      const arn = value("stream_arn").split(":");
      body.topic = (arn[5] || "").replace(/^stream\//, "");
      body.region = arn[3] || "";
    }
    return body;
  };

  async function verifyAndCreate(event) {
    event.preventDefault();
    const button = document.getElementById("verify");
    button.disabled = true;
    result.replaceChildren(h("p", { text: "Checking the role against AWS…" }));
    const name = value("endpoint_name");
    try {
      const body = endpointBody();
      const report = await api("POST", `/v1/customers/${enc(customer)}/verify`, body);
      const list = checksList(report);
      if (!report.ok) {
        result.replaceChildren(errorBox("The role check failed; nothing was saved. Fix the failing checks and verify again."), list);
        announce("The role check failed");
        return;
      }
      await api("PUT", `/v1/customers/${enc(customer)}/endpoints/${enc(name)}`, body);
      result.replaceChildren(
        h("div", { class: "notice", role: "status", id: "created" }, `Endpoint ${name} created. `,
          h("a", { href: `#/c/${enc(customer)}/e/${enc(name)}` }, "Open its status page")), list);
      announce(`Endpoint ${name} created`);
    } catch (error) {
      const report = error.body && error.body.report;
      result.replaceChildren(errorBox(error.message, error.fix), report ? checksList(report) : null);
    } finally {
      button.disabled = false;
    }
  }

  show("Set up an endpoint",
    h("p", {}, `Customer ${customer}. Vendor account `, h("code", { text: info.vendor_account }), ", external ID ", h("code", { text: info.external_id }), "."),
    h("h2", { text: "1. Where should the logs go?" }),
    h("form", { id: "dest-form", onsubmit: showDocuments },
      h("fieldset", {}, h("legend", { text: "Destination type" }),
        h("label", {}, h("input", { type: "radio", name: "kind", value: "s3", id: "kind-s3", checked: true, onchange: () => syncKind() }), "Amazon S3 bucket"),
        h("label", {}, h("input", { type: "radio", name: "kind", value: "kinesis", id: "kind-kinesis", onchange: () => syncKind() }), "Kinesis data stream")),
      field("endpoint_name", "Endpoint name", "Letters, digits, - and _; you send logs to /v1/ingest/" + customer + "/NAME.", { required: true }),
      field("bucket", "Bucket", "The S3 bucket the log files are written to."),
      field("prefix", "Key prefix (optional)", "Only keys under this prefix, e.g. cdn/"),
      field("region", "Bucket region (optional)", "Default us-east-1."),
      field("stream_arn", "Stream ARN", "arn:aws:kinesis:REGION:ACCOUNT:stream/NAME"),
      field("role_name", "Role name (optional)", "Default logferry-s3-logging or logferry-kinesis-logging."),
      h("div", { class: "actions" }, h("button", { type: "submit", id: "show-documents" }, "Show the documents"))),
    docs);
  syncKind();
}

function checksList(report) {
  return h("ol", { class: "checks", id: "checks", "aria-label": "Role checks" }, report.checks.map((c) =>
    h("li", { class: `check check-${c.status}` },
      h("span", { class: `check-status status-${c.status}`, text: c.status.toUpperCase() }), " ",
      h("strong", { text: c.name }), `: ${c.detail}`,
      c.fix ? h("span", { class: "fix", text: `Fix: ${c.fix}` }) : null)));
}

// ---------------------------------------------------------------- endpoint status

function chart(history) {
  const W = 600, H = 160, pad = 28;
  const buckets = history.buckets;
  const peak = Math.max(0, ...buckets.map((b) => b.lines));
  const maxLines = Math.max(1, peak); // scale only
  const maxErrors = Math.max(1, ...buckets.map((b) => b.errors));
  const totalLines = buckets.reduce((a, b) => a + b.lines, 0);
  const totalErrors = buckets.reduce((a, b) => a + b.errors, 0);
  const step = (W - pad) / buckets.length;
  const label = `Last hour: ${fmt(totalLines)} lines delivered, ${fmt(totalErrors)} delivery errors; peak ${fmt(peak)} lines per minute.`;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-title", id: "chart" });
  svg.append(s("title", { id: "chart-title" }, label));
  svg.append(s("line", { x1: pad, y1: H - 18, x2: W, y2: H - 18, stroke: "#767676" }));
  buckets.forEach((b, i) => {
    const x = pad + i * step;
    if (b.lines) {
      const bh = ((H - 30) * b.lines) / maxLines;
      svg.append(s("rect", { x: x + 1, y: H - 18 - bh, width: Math.max(1, step - 2), height: bh, fill: "#0b57d0" }, null));
    }
    if (b.errors) {
      const eh = (40 * b.errors) / maxErrors;
      svg.append(s("rect", { x: x + step / 3, y: H - 18 - eh, width: Math.max(1, step / 3), height: eh, fill: "#b3261e" }));
    }
  });
  svg.append(s("text", { x: pad, y: H - 4, "font-size": 11, fill: "#1b1b1b" }, "60 min ago"));
  svg.append(s("text", { x: W - 4, y: H - 4, "font-size": 11, fill: "#1b1b1b", "text-anchor": "end" }, "now"));
  svg.append(s("text", { x: 2, y: 12, "font-size": 11, fill: "#1b1b1b" }, `${fmt(peak)}/min`));
  return h("figure", { class: "chart" }, svg,
    h("figcaption", { class: "legend" }, h("span", { class: "lines", text: "■ delivered lines" }), "  ",
      h("span", { class: "errors", text: "■ errors" }), ` · ${label}`));
}

async function endpointPage(customer, name) {
  const base = `/v1/customers/${enc(customer)}/endpoints/${enc(name)}`;
  const [status, history, regions] = await Promise.all([
    api("GET", `${base}/status`), api("GET", `${base}/history`), api("GET", "/v1/sts/regions"),
  ]);
  const lines = status.lines || {};
  const errors = status.errors || [];
  show(`Endpoint ${name}`,
    h("p", {}, h("a", { href: who() && who().admin ? "#/admin" : `#/c/${enc(customer)}` }, "← back"), ` · customer ${customer}`),
    h("dl", { class: "kv" },
      h("dt", { text: "State" }), h("dd", { id: "state" }, stateBadge(status.state)),
      h("dt", { text: "Type" }), h("dd", { text: status.type }),
      h("dt", { text: "Last success" }), h("dd", { text: status.last_success || "—" })),
    status.reason ? errorBox(status.reason, status.fix) : null,
    status.last_error ? errorBox(`${status.last_error.code}: ${status.last_error.message}`, status.last_error.fix) : null,
    h("h2", { text: "Lines" }),
    h("div", { class: "table-wrap" }, h("table", { id: "counters" },
      h("thead", {}, h("tr", {}, h("th", { class: "num", text: "Accepted" }), h("th", { class: "num", text: "Delivered" }), h("th", { class: "num", text: "Pending" }))),
      h("tbody", {}, h("tr", {},
        h("td", { class: "num", id: "lines-accepted", text: fmt(lines.accepted) }),
        h("td", { class: "num", id: "lines-delivered", text: fmt(lines.delivered) }),
        h("td", { class: "num", id: "lines-pending", text: fmt(lines.pending) }))))),
    h("h2", { text: "Last hour" }), chart(history),
    h("h2", { text: "Last errors" }),
    errors.length ? h("div", { class: "table-wrap" }, h("table", { id: "errors" },
      h("thead", {}, h("tr", {}, h("th", { text: "Time" }), h("th", { text: "AWS code" }), h("th", { text: "Message" }), h("th", { text: "Fix" }))),
      h("tbody", {}, errors.map((e) => h("tr", {}, h("td", { text: e.time }), h("td", { text: e.code }), h("td", { text: e.message }), h("td", { text: e.fix || "" }))))))
      : h("p", { id: "errors", text: "No delivery errors." }),
    h("h2", { text: "STS regions (vendor side)" }),
    h("ul", { class: "sts", id: "sts-health" }, regions.map((r) => h("li", {},
      h("span", { class: r.healthy ? "healthy" : "unhealthy", text: r.healthy ? "healthy" : "unhealthy" }),
      ` ${r.region}`, r.last_error ? ` (${r.failures} failures: ${r.last_error})` : ""))),
    h("div", { class: "actions" }, h("button", { type: "button", id: "refresh", class: "secondary", onclick: () => route() }, "Refresh")));
  refreshTimer = setTimeout(() => route(true), 10000);
}

// ---------------------------------------------------------------- admin overview

const COLUMNS = [
  ["customer_id", "Customer"], ["name", "Endpoint"], ["type", "Type"], ["state", "State"],
  ["accepted", "Accepted", true], ["delivered", "Delivered", true], ["pending", "Pending", true], ["error", "Last error"],
];
let adminSort = { key: "customer_id", dir: 1 };

async function adminPage() {
  const [customers, statuses] = await Promise.all([api("GET", "/v1/customers"), api("GET", "/v1/endpoints/status")]);
  const rows = statuses.map((st) => ({
    customer_id: st.customer_id, name: st.name, type: st.type, state: st.state,
    accepted: (st.lines || {}).accepted ?? 0, delivered: (st.lines || {}).delivered ?? 0, pending: (st.lines || {}).pending ?? 0,
    error: st.last_error ? `${st.last_error.code}: ${st.last_error.message}` : (st.reason || ""),
  }));
  const draw = () => {
    const { key, dir } = adminSort;
    rows.sort((a, b) => (a[key] < b[key] ? -dir : a[key] > b[key] ? dir : 0));
    const table = h("table", { id: "all-endpoints" },
      h("caption", { class: "visually-hidden", text: "All endpoints; activate a column header to sort" }),
      h("thead", {}, h("tr", {}, COLUMNS.map(([k, label, num]) => h("th", {
        class: num ? "num" : null, scope: "col", "aria-sort": adminSort.key === k ? (dir > 0 ? "ascending" : "descending") : "none",
      }, h("button", { type: "button", "data-sort": k, onclick: () => { adminSort = { key: k, dir: adminSort.key === k ? -dir : 1 }; draw(); document.querySelector(`[data-sort=${k}]`).focus(); } }, label))))),
      h("tbody", {}, rows.map((r) => h("tr", {},
        h("td", {}, h("a", { href: `#/c/${enc(r.customer_id)}` }, r.customer_id)),
        h("td", {}, h("a", { href: `#/c/${enc(r.customer_id)}/e/${enc(r.name)}` }, r.name)),
        h("td", { text: r.type }), h("td", {}, stateBadge(r.state)),
        h("td", { class: "num", text: fmt(r.accepted) }), h("td", { class: "num", text: fmt(r.delivered) }),
        h("td", { class: "num", text: fmt(r.pending) }), h("td", { text: r.error })))));
    wrap.replaceChildren(table);
  };
  const wrap = h("div", { class: "table-wrap" });
  const noEndpoints = customers.filter((c) => !c.endpoints.length);
  show("All customers and endpoints",
    h("p", { text: `${customers.length} customers, ${rows.length} endpoints.` }), wrap,
    noEndpoints.length ? h("p", {}, "Customers without endpoints: ",
      noEndpoints.map((c, i) => [i ? ", " : "", h("a", { href: `#/c/${enc(c.id)}/setup` }, c.id)])) : null);
  draw();
}

// ---------------------------------------------------------------- router

async function route(quiet = false) {
  clearTimeout(refreshTimer);
  routeReads.abort();
  routeReads = new AbortController();
  quietRender = quiet;
  header();
  if (!sessionStorage.getItem(TOKEN_KEY)) return signInPage();
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const me = who();
  try {
    if (parts[0] === "admin") await adminPage();
    else if (parts[0] === "c" && parts[2] === "setup") await setupPage(parts[1]);
    else if (parts[0] === "c" && parts[2] === "e" && parts[3]) await endpointPage(parts[1], parts[3]);
    else if (parts[0] === "c" && parts[1]) await customerPage(parts[1]);
    else if (me && me.admin) await adminPage();
    else if (me) await customerPage(me.customer_id);
    else signInPage();
  } catch (error) {
    if (error instanceof Superseded) return; // a newer route() owns the page now
    if (error.status === 401) {
      sessionStorage.clear();
      return signInPage(error.message);
    }
    if (!quiet || !main.querySelector("h1")) {
      show(error.status === 403 || error.status === 404 ? "Not available" : "Something went wrong",
        errorBox(error.message, error.fix), h("p", {}, h("a", { href: "#/" }, "Back to start")));
    }
  }
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.clear();
  go("#/");
});
window.addEventListener("hashchange", () => route());
route();
