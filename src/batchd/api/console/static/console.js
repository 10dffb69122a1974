// The batchd console: reads the Batches API with the key kept in this tab's session storage.
"use strict";

const KEY = "batchd.api-key";
const API = "/v1/messages/batches";
const OPENAI_API = "/v1/batches"; // the OpenAI face's batches (ids batch_...), shown alike
const OPENAI_FINAL = ["completed", "failed", "expired", "cancelled"];
const STATES = ["succeeded", "errored", "canceled", "expired"];
const FAST = 1000; // ms between refreshes while something runs
const SLOW = 5000; // ms between refreshes of a quiet list (new batches still show up)

let timer = null;

class AuthError extends Error {}

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers);
  const key = sessionStorage.getItem(KEY);
  if (key) headers["x-api-key"] = key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    const wasSet = key !== null;
    sessionStorage.removeItem(KEY);
    showLogin(wasSet ? "That key was refused (401): enter a valid key." : "");
    throw new AuthError("401");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch (_) {
      // not our error envelope: keep the status line
    }
    throw new Error(message);
  }
  return response;
}

function showOnly(id) {
  for (const section of ["login", "list", "detail", "usage-page", "webhooks-page"]) {
    $(section).hidden = section !== id;
  }
}

function showLogin(message) {
  clearTimeout(timer);
  showOnly("login");
  $("forget").hidden = true;
  $("login-error").textContent = message;
  $("key").focus();
}

function problem(message) {
  $("problem").hidden = !message;
  $("problem").textContent = message || "";
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function seconds(from, to) {
  const s = Math.max(0, (new Date(to) - new Date(from)) / 1000);
  if (s < 90) return `${s.toFixed(1)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function totals(counts) {
  const done = STATES.reduce((sum, state) => sum + counts[state], 0);
  return { done, total: done + counts.processing };
}

function bar(counts, node) {
  const { total } = totals(counts);
  node.replaceChildren();
  node.setAttribute("role", "progressbar");
  node.setAttribute("aria-valuemin", "0");
  node.setAttribute("aria-valuemax", String(total));
  node.setAttribute("aria-valuenow", String(totals(counts).done));
  for (const state of STATES) {
    if (!counts[state]) continue;
    const segment = el("span", { class: `seg ${state}`, title: `${counts[state]} ${state}` });
    segment.style.width = `${total ? (100 * counts[state]) / total : 0}%`; // CSSOM: allowed by the CSP
    node.append(segment);
  }
  return node;
}

function countsText(counts) {
  const { done, total } = totals(counts);
  const parts = STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`);
  return `${done} / ${total} done` + (parts.length ? ` · ${parts.join(" · ")}` : "");
}

function schedule(load, running) {
  clearTimeout(timer);
  $("refresh").textContent = running ? "refreshing every second" : "";
  timer = setTimeout(load, running ? FAST : SLOW);
}

// -- the OpenAI face's batches, in the Message Batches shape ---------------------------

const isOpenAI = (id) => id.startsWith("batch_");
const iso = (seconds) => (seconds ? new Date(seconds * 1000).toISOString() : null);

function fromOpenAI(batch) {
  const c = batch.request_counts || { total: 0, completed: 0, failed: 0 };
  const ended = OPENAI_FINAL.includes(batch.status);
  const rest = c.total - c.completed - c.failed;
  return {
    id: batch.id,
    openai_status: batch.status,
    processing_status: ended ? "ended" : batch.status === "cancelling" ? "canceling" : "in_progress",
    created_at: iso(batch.created_at),
    ended_at: iso(batch.completed_at || batch.failed_at || batch.expired_at || batch.cancelled_at),
    cancel_initiated_at: iso(batch.cancelling_at),
    expires_at: iso(batch.expires_at),
    archived_at: null,
    files: [batch.output_file_id, batch.error_file_id].filter(Boolean),
    request_counts: {
      processing: ended ? 0 : rest,
      succeeded: c.completed,
      errored: c.failed,
      canceled: batch.status === "cancelled" ? rest : 0,
      expired: batch.status === "expired" ? rest : 0,
    },
  };
}

// -- the list -------------------------------------------------------------------------

async function loadList() {
  const [messages, openai] = await Promise.all([
    api(`${API}?limit=100`).then((r) => r.json()),
    api(`${OPENAI_API}?limit=100`).then((r) => r.json()),
  ]);
  const batches = messages.data.concat(openai.data.map(fromOpenAI));
  batches.sort((a, b) => new Date(b.created_at) - new Date(a.created_at));
  const page = { data: batches.slice(0, 100) };
  showOnly("list");
  const rows = page.data.map((batch) =>
    el(
      "tr",
      { "data-batch": batch.id, class: batch.processing_status },
      el("td", {}, el("a", { href: `/console/batches/${batch.id}`, text: batch.id })),
      el("td", {}, el("span", { class: `status ${batch.processing_status}`, text: batch.processing_status })),
      el("td", { text: when(batch.created_at) }),
      el("td", { class: "wide" }, bar(batch.request_counts, el("div", { class: "bar" }))),
      el("td", { class: "counts", text: countsText(batch.request_counts) }),
    ),
  );
  $("batch-rows").replaceChildren(...rows);
  $("empty").hidden = rows.length > 0;
  return page.data.some((batch) => batch.processing_status !== "ended");
}

// -- one batch ------------------------------------------------------------------------

function factRows(pairs) {
  return pairs.map(([name, value]) =>
    el("tr", {}, el("th", { text: name }), value instanceof Node ? el("td", {}, value) : el("td", { text: value })),
  );
}

function batchLink(id) {
  return id ? el("a", { href: `/console/batches/${encodeURIComponent(id)}`, text: id }) : "—";
}

function batchLinks(ids) {
  if (!ids.length) return "—";
  const span = el("span");
  ids.forEach((id, i) => span.append(...(i ? [" ", batchLink(id)] : [batchLink(id)])));
  return span;
}

async function loadErrors(id, counts) {
  if (!counts.errored) {
    $("error-rows").replaceChildren();
    $("no-errors").hidden = false;
    return;
  }
  const errors = (await (await api(`/console/api/batches/${id}/errors?limit=10`)).json()).data;
  $("error-rows").replaceChildren(
    ...errors.map((e) =>
      el("tr", {}, el("td", { text: e.custom_id }), el("td", { text: e.error_type }), el("td", { text: e.message })),
    ),
  );
  $("no-errors").hidden = errors.length > 0;
}

// batchd's own: priority, completion window and whether the deadline is at risk.
async function scheduleRows(id, ended) {
  let schedule;
  try {
    schedule = await (await api(`${API}/${encodeURIComponent(id)}/schedule`)).json();
  } catch (error) {
    if (error instanceof AuthError) throw error;
    return []; // a server without the route: nothing to add
  }
  const rows = [
    ["priority", schedule.priority],
    ["window", schedule.completion_window],
  ];
  if (!ended) {
    rows.push(["projected end", when(schedule.projected_end_at)]);
    rows.push(["deadline", schedule.at_risk ? "AT RISK at the rate so far" : "on track"]);
  }
  return rows;
}

async function loadBatch(id) {
  const openai = isOpenAI(id);
  const batch = openai
    ? fromOpenAI(await (await api(`${OPENAI_API}/${encodeURIComponent(id)}`)).json())
    : await (await api(`${API}/${encodeURIComponent(id)}`)).json();
  const details = openai // batchd's own details: the Message Batches face's
    ? { reused_answers: 0, retry_of: null, retried_by: [] }
    : await (await api(`${API}/${encodeURIComponent(id)}/details`)).json();
  showOnly("detail");
  document.title = `${batch.id} · batchd`;
  const counts = batch.request_counts;
  const ended = batch.processing_status === "ended";
  $("batch-id").textContent = batch.id;
  $("batch-status").textContent = batch.processing_status;
  $("batch-status").className = `status ${batch.processing_status}`;
  bar(counts, $("batch-bar"));
  const { done } = totals(counts);
  const elapsed = (new Date(batch.ended_at || Date.now()) - new Date(batch.created_at)) / 1000;
  const rate = elapsed > 0 ? `${(done / elapsed).toFixed(1)} requests/s` : "—";
  $("batch-progress").textContent = `${countsText(counts)} · ${rate}`;
  $("timings").replaceChildren(
    ...factRows([
      ["created", when(batch.created_at)],
      ["cancel requested", when(batch.cancel_initiated_at)],
      ["ended", when(batch.ended_at)],
      ["took", ended ? seconds(batch.created_at, batch.ended_at) : `${seconds(batch.created_at, new Date())} so far`],
      ["expires", ended ? "—" : when(batch.expires_at)],
      ["archived", when(batch.archived_at)],
      ["retry of", batchLink(details.retry_of)],
      ["retried by", batchLinks(details.retried_by)],
      ...(await scheduleRows(batch.id, ended)),
    ]),
  );
  $("counts").replaceChildren(
    ...factRows(
      [["processing", counts.processing], ...STATES.map((s) => [s, counts[s]]), ["reused answers", details.reused_answers]].map(
        ([n, v]) => [n, String(v)],
      ),
    ),
  );
  $("cancel").disabled = batch.processing_status !== "in_progress";
  $("download").disabled = !ended || Boolean(batch.archived_at) || (batch.files && !batch.files.length);
  await loadErrors(batch.id, counts);
  await loadBatchUsage(batch.id); // both faces' results count into usage
  if (!openai) await loadResults(batch.id); // the paged results are the Message Batches face's
  return !ended;
}

// -- usage and cost -------------------------------------------------------------------

const number = (n) => Number(n).toLocaleString("en-US");

function money(cost) {
  return cost ? `${cost.batch.toFixed(4)} ${cost.currency}` : "—";
}

function interactiveMoney(cost) {
  return cost ? `${cost.interactive.toFixed(4)} ${cost.currency}` : "—";
}

async function loadBatchUsage(id) {
  const usage = await (await api(`${API}/${encodeURIComponent(id)}/usage`)).json();
  const rows = [
    ["input tokens", number(usage.input_tokens)],
    ["output tokens", number(usage.output_tokens)],
    ["cache-read tokens", number(usage.cache_read_input_tokens)],
    ["cost (batch)", money(usage.cost)],
    ["same tokens interactively", interactiveMoney(usage.cost)],
    ...usage.models
      .filter((m) => m.model)
      .map((m) => [`model ${m.model}`, `${number(m.requests)} requests · ${number(m.input_tokens)} in · ${number(m.output_tokens)} out · ${money(m.cost)}`]),
  ];
  $("usage").replaceChildren(...factRows(rows));
  $("usage-note").textContent = usage.cost ? "" : "(no prices configured)";
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text = "") {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text) node.textContent = text;
  return node;
}

// Tokens per day as stacked bars (input under output), drawn here: no outside script.
function chart(days) {
  const width = 900;
  const height = 240;
  const left = 60;
  const bottom = 24;
  const top = 10;
  const max = Math.max(1, ...days.map((d) => d.input + d.output));
  const step = (width - left) / Math.max(days.length, 1);
  const scale = (height - bottom - top) / max;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "tokens per day" });
  root.append(svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width, y2: height - bottom }));
  root.append(svg("text", { x: 4, y: top + 10 }, number(max)));
  root.append(svg("text", { x: 4, y: height - bottom }, "0"));
  days.forEach((d, i) => {
    const w = Math.min(step * 0.7, 48);
    const x = left + i * step + (step - w) / 2;
    const inputHeight = d.input * scale;
    const outputHeight = d.output * scale;
    const base = height - bottom;
    const title = `${d.day}: ${number(d.input)} input, ${number(d.output)} output tokens, ${d.cost}`;
    const bar = svg("g", { "data-day": d.day });
    bar.append(svg("title", {}, title));
    bar.append(svg("rect", { class: "input", x, y: base - inputHeight, width: w, height: inputHeight }));
    bar.append(svg("rect", { class: "output", x, y: base - inputHeight - outputHeight, width: w, height: outputHeight }));
    bar.append(svg("text", { x: x + w / 2, y: height - 6, "text-anchor": "middle" }, d.day.slice(5)));
    root.append(bar);
  });
  return root;
}

function sumInto(groups, key, row) {
  const group = groups.get(key) || { requests: 0, input: 0, output: 0, cacheRead: 0, batch: 0, interactive: 0, currency: "" };
  group.requests += Object.values(row.requests).reduce((a, b) => a + b, 0);
  group.input += row.input_tokens;
  group.output += row.output_tokens;
  group.cacheRead += row.cache_read_input_tokens;
  if (row.cost) {
    group.batch += row.cost.batch;
    group.interactive += row.cost.interactive;
    group.currency = row.cost.currency;
  }
  groups.set(key, group);
}

async function loadUsage() {
  const usage = await (await api("/console/api/usage")).json();
  showOnly("usage-page");
  document.title = "Usage · batchd";
  const byDay = new Map();
  const byWorkspace = new Map();
  for (const row of usage.data) {
    sumInto(byDay, row.day, row);
    sumInto(byWorkspace, row.workspace, row);
  }
  const priced = (g) => (usage.currency ? `${g.batch.toFixed(4)} ${usage.currency}` : "—");
  const days = [...byDay.entries()].map(([day, g]) => ({ day, input: g.input, output: g.output, cost: priced(g) }));
  $("usage-chart").replaceChildren(chart(days));
  $("usage-legend").textContent = "blue: input tokens · green: output tokens";
  $("usage-workspaces").replaceChildren(
    ...[...byWorkspace.entries()].map(([workspace, g]) =>
      el(
        "tr",
        { "data-workspace": workspace },
        el("td", { text: workspace }),
        ...[g.requests, g.input, g.output, g.cacheRead].map((n) => el("td", { class: "num", text: number(n) })),
        el("td", { class: "num", text: priced(g) }),
        el("td", { class: "num", text: usage.currency ? `${g.interactive.toFixed(4)} ${usage.currency}` : "—" }),
      ),
    ),
  );
  $("usage-days").replaceChildren(
    ...usage.data.map((row) =>
      el(
        "tr",
        {},
        ...[row.day, row.workspace, row.model || "(never ran)"].map((t) => el("td", { text: t })),
        el("td", { class: "num", text: number(Object.values(row.requests).reduce((a, b) => a + b, 0)) }),
        el("td", { class: "num", text: number(row.input_tokens) }),
        el("td", { class: "num", text: number(row.output_tokens) }),
        el("td", { class: "num", text: money(row.cost) }),
      ),
    ),
  );
  $("usage-empty").hidden = usage.data.length > 0;
  return false;
}

// -- webhooks -------------------------------------------------------------------------

async function loadWebhooks() {
  const endpoints = (await (await api("/v1/webhooks")).json()).data;
  showOnly("webhooks-page");
  document.title = "Webhooks · batchd";
  const cards = [];
  for (const endpoint of endpoints) {
    const path = `/v1/webhooks/${encodeURIComponent(endpoint.id)}/deliveries?limit=10`;
    const deliveries = (await (await api(path)).json()).data;
    const state = endpoint.disabled_at ? `disabled: ${endpoint.disabled_reason}` : "active";
    cards.push(
      el(
        "div",
        { class: "endpoint", "data-endpoint": endpoint.id },
        el("h2", { text: `${endpoint.url}` }),
        el("p", { class: "hint", text: `${endpoint.id} · ${endpoint.events.join(", ")} · ${state}` }),
        el(
          "table",
          {},
          el("thead", {}, el("tr", {}, ...["Event", "webhook-id", "State", "Attempts", "Created", "Last answer"].map((h) => el("th", { text: h })))),
          el(
            "tbody",
            {},
            ...deliveries.map((d) =>
              el(
                "tr",
                {},
                el("td", { text: d.event_type }),
                el("td", { text: d.webhook_id }),
                el("td", { class: d.state, text: d.state }),
                el("td", { text: String(d.attempts) }),
                el("td", { text: when(d.created_at) }),
                el("td", { text: d.last_error || (d.last_status ? `HTTP ${d.last_status}` : "—") }),
              ),
            ),
          ),
        ),
      ),
    );
  }
  $("endpoints").replaceChildren(...cards);
  $("no-endpoints").hidden = endpoints.length > 0;
  return false; // refreshed every few seconds, not every second
}

// -- one batch's results: paged, filtered, found by custom_id, one opened ---------------

const results = { after: 0, next: null, earlier: [], open: null };

function resultsQuery() {
  const query = new URLSearchParams({ limit: "20", after: String(results.after) });
  if ($("result-type").value) query.set("type", $("result-type").value);
  const search = $("result-search").value.trim();
  if (search) query.set("custom_id", search);
  return query;
}

async function loadResults(id) {
  const path = `/console/api/batches/${encodeURIComponent(id)}/results?${resultsQuery()}`;
  const page = await (await api(path)).json();
  $("result-rows").replaceChildren(
    ...page.data.map((result) => {
      const row = el(
        "tr",
        { "data-custom-id": result.custom_id, class: result.custom_id === results.open ? "open" : "" },
        el("td", { text: result.custom_id }),
        el("td", { class: `type ${result.type}`, text: result.type }),
        el("td", { text: result.summary }),
      );
      row.addEventListener("click", guarded(() => openResult(id, result.custom_id)));
      return row;
    }),
  );
  results.next = page.next_after;
  $("no-results").hidden = page.data.length > 0;
  $("results-next").disabled = page.next_after === null;
  $("results-first").disabled = results.after === 0;
  $("results-page").textContent = `page ${results.earlier.length + 1}`;
}

function block(kind, title, ...children) {
  return el("div", { class: `block ${kind}` }, el("h3", { text: title }), ...children);
}

function contentBlock(content) {
  if (content.type === "text") return block("text", "text", el("p", { text: content.text }));
  if (content.type === "tool_use") {
    return block("tool_use", `tool_use · ${content.name} · ${content.id}`, el("pre", { text: JSON.stringify(content.input, null, 2) }));
  }
  return block(content.type, content.type, el("pre", { text: JSON.stringify(content, null, 2) }));
}

function renderResult(result) {
  if (result.type === "succeeded") {
    const m = result.message;
    const usage = m.usage || {};
    const meta = `${m.model} · ${m.id} · stop_reason ${m.stop_reason}` + ` · ${usage.input_tokens} tokens in, ${usage.output_tokens} out`;
    return [el("p", { class: "meta", text: meta }), ...m.content.map(contentBlock)];
  }
  if (result.type === "errored") {
    const error = (result.error && result.error.error) || {};
    return [block("error", error.type || "error", el("p", { text: error.message || "" }))];
  }
  const why = result.type === "canceled" ? "The batch was canceled before this request ran." : "The batch expired before this request ran.";
  return [el("p", { class: "hint", text: why })];
}

async function openResult(id, customId) {
  const path = `/console/api/batches/${encodeURIComponent(id)}/results/${encodeURIComponent(customId)}`;
  const line = await (await api(path)).json();
  results.open = customId;
  for (const row of $("result-rows").children) row.classList.toggle("open", row.dataset.customId === customId);
  $("result-id").textContent = line.custom_id;
  $("result-type-badge").textContent = line.result.type;
  $("result-type-badge").className = `status type ${line.result.type}`;
  $("result-body").replaceChildren(...renderResult(line.result));
  $("result-view").hidden = false;
}

function resultsPaged(move) {
  return guarded(async (id) => {
    move();
    await loadResults(id);
  });
}

async function cancelBatch(id) {
  if (!confirm(`Cancel ${id}? Queued requests will not run.`)) return;
  $("cancel").disabled = true;
  await api(`${isOpenAI(id) ? OPENAI_API : API}/${encodeURIComponent(id)}/cancel`, {
    method: "POST",
    headers: { "content-type": "application/json" },
  });
  $("action-note").textContent = "Cancel requested.";
  await refresh();
}

async function openAIResults(id) {
  // the output file's lines, then the error file's: every custom_id once
  const batch = fromOpenAI(await (await api(`${OPENAI_API}/${encodeURIComponent(id)}`)).json());
  const parts = [];
  for (const file of batch.files) parts.push(await (await api(`/v1/files/${file}/content`)).blob());
  return new Blob(parts, { type: "application/jsonl" });
}

async function downloadResults(id) {
  const blob = isOpenAI(id)
    ? await openAIResults(id)
    : await (await api(`${API}/${encodeURIComponent(id)}/results`)).blob();
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: `${id}_results.jsonl` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  $("action-note").textContent = `Downloaded ${blob.size} bytes.`;
}

// -- wiring ---------------------------------------------------------------------------

function batchIdFromPath() {
  const match = location.pathname.match(/^\/console\/batches\/([^/]+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

function pageLoader() {
  const id = batchIdFromPath();
  if (id) return () => loadBatch(id);
  if (location.pathname === "/console/usage") return loadUsage;
  if (location.pathname === "/console/webhooks") return loadWebhooks;
  return null;
}

async function refresh() {
  const id = batchIdFromPath();
  const loader = pageLoader();
  try {
    const running = loader ? await loader() : await loadList();
    problem("");
    const keyed = sessionStorage.getItem(KEY) !== null;
    $("forget").hidden = !keyed;
    $("mode").textContent = keyed ? "" : "open mode: this server has no keys";
    if (running || !id) schedule(refresh, running);
  } catch (error) {
    if (error instanceof AuthError) return;
    problem(`Could not load: ${error.message}`);
    schedule(refresh, false);
  }
}

function guarded(action) {
  return () => action(batchIdFromPath()).catch((error) => {
    if (!(error instanceof AuthError)) problem(error.message);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    $("login-error").textContent = "";
    refresh();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin("");
  });
  $("cancel").addEventListener("click", guarded(cancelBatch));
  $("download").addEventListener("click", guarded(downloadResults));
  $("results-form").addEventListener("submit", (event) => {
    event.preventDefault();
    resultsPaged(() => Object.assign(results, { after: 0, earlier: [] }))();
  });
  $("result-type").addEventListener(
    "change",
    resultsPaged(() => Object.assign(results, { after: 0, earlier: [] })),
  );
  $("results-next").addEventListener(
    "click",
    resultsPaged(() => {
      results.earlier.push(results.after);
      results.after = results.next;
    }),
  );
  $("results-first").addEventListener(
    "click",
    resultsPaged(() => Object.assign(results, { after: 0, earlier: [] })),
  );
  refresh();
});
