// The operator's dashboard at /ui: a page over the server's own JSON routes, with the key
// the operator signs in with (the admin key, or a tenant's key for that tenant alone). It
// keeps nothing of its own; every figure is an exact integer from the server, written into
// the page as text (never as markup).
"use strict";

const KEY = "allotment.key";
const state = { key: null, who: null, tenant: null, budgets: [], transferKey: null };
const $ = (id) => document.getElementById(id);

// -- the server ---------------------------------------------------------------------------

function headers() {
  return state.key.startsWith("alk_") ? { "X-Cycles-API-Key": state.key }
    : { "X-Admin-API-Key": state.key };
}

async function api(path, options = {}) {
  const answer = await fetch(path, { ...options, headers: { ...headers(), ...options.headers } });
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new Error(body.message || `HTTP ${answer.status}`);
  return body;
}

const MOST_PAGES = 50;

async function every(path, field) {
  // every page of a list (`has_more`, `next_cursor`), up to MOST_PAGES of 100 rows; past
  // that, the page says it shows only the first ones
  const rows = [];
  let cursor = "";
  for (let page = 0; page < MOST_PAGES; page += 1) {
    const body = await api(path + (path.includes("?") ? "&" : "?") + "limit=100" + cursor);
    rows.push(...body[field]);
    if (!body.has_more) return rows;
    cursor = "&cursor=" + encodeURIComponent(body.next_cursor);
  }
  $("note").textContent = `Showing the first ${rows.length.toLocaleString("en-US")} rows.`;
  return rows;
}

// -- amounts: exact, as allotment.format_amount writes them -------------------------------

function amount(value) {
  if (!value) return "";
  if (value.unit === "USD_MICROCENTS") return dollars(value.amount);
  const name = value.unit.toLowerCase().replaceAll("_", " ");
  return `${value.amount.toLocaleString("en-US")} ${name}`;
}

function dollars(microcents) {
  // 1 USD = 10^8 microcents: split the integer's digits, so nothing is rounded
  const digits = String(Math.abs(microcents)).padStart(9, "0");
  const whole = Number(digits.slice(0, -8)).toLocaleString("en-US");
  let cents = digits.slice(-8).replace(/0+$/, "");
  if (cents.length < 2) cents = cents.padEnd(2, "0");
  return `${microcents < 0 ? "-" : ""}$${whole}.${cents}`;
}

function toUnits(text, unit) {
  // what the operator typed ("1,250.50", "$12") as an integer of `unit` (dollars for USD),
  // exactly, or null: never rounded, never past the largest exact integer (2^53 - 1)
  const match = /^(\d{1,16})(?:\.(\d{1,8}))?$/.exec(text.trim().replace(/^\$/, "")
    .replaceAll(",", ""));
  if (!match) return null;
  const units = unit !== "USD_MICROCENTS" ? (match[2] ? NaN : Number(match[1]))
    : Number(match[1]) * 1e8 + Number((match[2] || "").padEnd(8, "0"));
  return Number.isSafeInteger(units) ? units : null;
}

function percent(fraction) {
  // as Python's `{:.0%}` writes it: a half rounds to the even whole
  const scaled = fraction * 100;
  let whole = Math.round(scaled);
  if (Math.abs(scaled % 1) === 0.5 && whole % 2 !== 0) whole -= 1;
  return `${whole}%`;
}

function idempotencyKey() {
  // crypto.randomUUID needs a secure origin; getRandomValues works on plain http too
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// -- tables -------------------------------------------------------------------------------

function table(id, columns, rows, empty) {
  // columns: [heading, row -> text, "num"?]; every cell is text, never markup
  const node = $(id);
  node.replaceChildren();
  const head = node.createTHead().insertRow();
  for (const [title] of columns) {
    const th = document.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  const tbody = node.createTBody();
  if (rows.length === 0) {
    const cell = tbody.insertRow().insertCell();
    cell.colSpan = columns.length;
    cell.className = "empty";
    cell.textContent = empty;
  }
  for (const row of rows) {
    const tr = tbody.insertRow();
    for (const [, value, kind] of columns) {
      const cell = tr.insertCell();
      const content = value(row);
      if (content instanceof Node) cell.appendChild(content);
      else cell.textContent = content ?? "";
      if (kind === "num") cell.className = "num";
    }
  }
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC") : "";
}

function used(row) {
  const allocated = row.allocated.amount;
  if (allocated <= 0) return "";
  return `${Math.floor(((row.spent.amount + row.reserved.amount) * 100) / allocated)}%`;
}

// -- views --------------------------------------------------------------------------------

function show(view) {
  for (const id of ["overview", "tenants", "tenant", "events"]) $(id).hidden = id !== view;
  for (const tab of $("tabs").querySelectorAll("button")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
}

async function overview() {
  const o = await api("/v1/admin/overview");
  const cards = [
    ["Tenants", o.tenant_counts.total, `${o.tenant_counts.suspended} suspended`],
    ["Budgets", o.budget_counts.total, `${o.budget_counts.over_limit} over limit`],
    ["In debt", o.budget_counts.with_debt, "budgets"],
    ["Webhooks", o.webhook_counts.total, `${o.webhook_counts.with_failures} failing`],
    ["Events", o.event_counts.total_recent, "in the last hour"],
  ];
  $("cards").replaceChildren(...cards.map(([title, figure, note]) => {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.card = title;
    const big = document.createElement("b");
    big.textContent = String(figure);
    card.append(title, big, note);
    return card;
  }));
  table("over-limit", [["Scope", (r) => r.scope], ["Allocated", (r) => amount(
    { unit: r.unit, amount: r.allocated }), "num"], ["Remaining", (r) => amount(
    { unit: r.unit, amount: r.remaining }), "num"], ["Debt", (r) => amount(
    { unit: r.unit, amount: r.debt }), "num"]], o.over_limit_scopes, "None.");
  table("in-debt", [["Scope", (r) => r.scope], ["Debt", (r) => amount(
    { unit: r.unit, amount: r.debt }), "num"], ["Overdraft limit", (r) => amount(
    { unit: r.unit, amount: r.overdraft_limit }), "num"]], o.debt_scopes, "None.");
  table("denials", [["Time", (e) => when(e.timestamp)], ["Tenant", (e) => e.tenant_id],
    ["Scope", (e) => e.scope], ["Reason", (e) => e.data.reason]], o.recent_denials,
  "None in the last hour.");
  table("failing", [["Subscription", (w) => w.subscription_id], ["URL", (w) => w.url],
    ["Failures in a row", (w) => String(w.consecutive_failures), "num"]], o.failing_webhooks,
  "None.");
  show("overview");
}

async function tenants() {
  const rows = await every("/v1/admin/tenants", "tenants");
  table("tenant-list", [["Tenant", (t) => t.tenant_id], ["Name", (t) => t.name],
    ["Status", (t) => t.status], ["", (t) => button("Open", () => run(() => tenant(
      t.tenant_id)))]], rows, "No tenants yet.");
  show("tenants");
}

async function tenant(name) {
  state.tenant = name;
  $("tenant-name").textContent = name;
  const admin = state.who.auth_type === "admin";
  const named = admin ? `tenant_id=${encodeURIComponent(name)}` : "";
  const can = state.who.capabilities;
  state.budgets = can.view_budgets ? await every(`/v1/admin/budgets?${named}`, "ledgers") : [];
  table("budgets", [["Scope", (b) => b.scope], ["Period", (b) => period(b)],
    ["Allocated", (b) => amount(b.allocated), "num"], ["Spent", (b) => amount(b.spent), "num"],
    ["Reserved", (b) => amount(b.reserved), "num"],
    ["Remaining", (b) => amount(b.remaining), "num"], ["Debt", (b) => amount(b.debt), "num"],
    ["Used", used, "num"], ["Status", (b) => b.status]], state.budgets,
  can.view_budgets ? "No budgets." : "This key may not read budgets.");
  const movable = admin || state.who.permissions.includes("budgets:write");
  $("transfer").hidden = !movable || state.budgets.length < 2;
  fillTransfer();
  const audited = admin ? `/v1/audit?tenant=${encodeURIComponent(name)}&limit=50`
    : "/v1/audit?limit=50";
  const records = can.view_audit ? (await api(audited)).records.reverse() : [];
  table("audit", [["Time", (r) => when(r.at)], ["Type", (r) => r.type],
    ["Scope", (r) => r.scopes[r.scopes.length - 1] || ""], ["What", summary]], records,
  can.view_audit ? "Nothing on record." : "This key may not read the audit log.");
  show("tenant");
}

function period(ledger) {
  return ledger.period_start ? `${ledger.period_start.slice(0, 10)} to ${
    ledger.period_end.slice(0, 10)}` : "";
}

function summary(record) {
  const parts = [];
  const d = record.detail;
  if (record.reason) parts.push(record.reason);
  if (d.threshold !== undefined) {  // a budget notification on record
    parts.push(`${percent(d.threshold)} of ${amount({ unit: d.unit, amount: d.allocated })}`);
  }
  if (record.charged.length) parts.push(`charged ${record.charged.map(amount).join(", ")}`);
  else if (record.estimate.length) parts.push(`estimate ${record.estimate.map(amount).join(", ")}`);
  if (record.actor) parts.push(`by ${record.actor}`);
  return parts.join("; ");
}

function fillTransfer() {
  const options = state.budgets.map((b) => {
    const option = document.createElement("option");
    option.value = b.ledger_id;
    option.textContent = `${b.scope} (${amount(b.remaining)} left)`;
    return option;
  });
  $("transfer-from").replaceChildren(...options.map((o) => o.cloneNode(true)));
  $("transfer-to").replaceChildren(...options);
  if (options.length > 1) $("transfer-to").selectedIndex = 1;
  $("transfer-result").textContent = "";
  state.transferKey = null;
}

async function transfer(event) {
  event.preventDefault();
  const byId = (id) => state.budgets.find((b) => b.ledger_id === $(id).value);
  const source = byId("transfer-from");
  const destination = byId("transfer-to");
  const unit = source.unit;
  const value = toUnits($("transfer-amount").value, unit);
  if (destination.unit !== unit) throw new Error("Both budgets must be in the same unit.");
  if (value === null || value <= 0) {
    throw new Error(unit === "USD_MICROCENTS"
      ? "Amount: dollars, e.g. 500 or 12.50 (at most $90,071,992.54740991)."
      : "Amount: a whole number.");
  }
  // one key per transfer as filled in: sent again (a double click, a retry after a lost
  // answer), the server answers the first result instead of moving the amount twice
  state.transferKey = state.transferKey || idempotencyKey();
  const body = { source: source.scope, destination: destination.scope,
    amount: { unit, amount: value }, idempotency_key: state.transferKey };
  if (state.who.auth_type === "admin") body.tenant_id = state.tenant;
  const submit = $("transfer").querySelector("button");
  submit.disabled = true;
  try {
    await api("/v1/admin/transfers", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
  } finally {
    submit.disabled = false;
  }
  await tenant(state.tenant);
  $("transfer-result").textContent =
    `Moved ${amount({ unit, amount: value })} from ${source.scope} to ${destination.scope}.`;
}

async function events() {
  const body = await api("/v1/admin/events?limit=50");
  table("event-list", [["Time", (e) => when(e.timestamp)], ["Tenant", (e) => e.tenant_id],
    ["Type", (e) => e.event_type], ["Scope", (e) => e.scope || ""]], body.events,
  "No events yet.");
  show("events");
}

// -- signing in and out -------------------------------------------------------------------

function button(label, action) {
  const made = document.createElement("button");
  made.type = "button";
  made.textContent = label;
  made.addEventListener("click", action);
  return made;
}

async function run(step) {
  // one user action: its failure is said on the page, never thrown away
  $("error").textContent = "";
  $("note").textContent = "";
  try {
    await step();
  } catch (error) {
    $("error").textContent = error.message;
  }
}

async function signIn(key) {
  state.key = key;
  try {
    state.who = await api("/v1/auth/introspect");
  } catch (error) {
    signOut();
    throw error;
  }
  sessionStorage.setItem(KEY, key);
  $("key").value = "";
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  const admin = state.who.auth_type === "admin";
  $("who").textContent = admin ? "Admin key: every tenant"
    : `Tenant key: ${state.who.tenant_id} only`;
  $("tabs").hidden = !admin;
  await (admin ? overview() : tenant(state.who.tenant_id));
}

function signOut() {
  sessionStorage.removeItem(KEY);
  Object.assign(state, { key: null, who: null, tenant: null, budgets: [], transferKey: null });
  $("key").value = "";
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("tabs").hidden = true;
  $("who").textContent = "";
  show(null);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    run(() => signIn($("key").value.trim()));
  });
  $("sign-out").addEventListener("click", signOut);
  $("transfer").addEventListener("submit", (event) => run(() => transfer(event)));
  $("transfer").addEventListener("input", () => { state.transferKey = null; });
  const views = { overview, tenants, events };
  for (const tab of $("tabs").querySelectorAll("button")) {
    tab.addEventListener("click", () => run(views[tab.dataset.view]));
  }
  const kept = sessionStorage.getItem(KEY);
  if (kept) run(() => signIn(kept));
});
