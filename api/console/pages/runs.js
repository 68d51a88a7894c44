// Runs: the live list (filters, a chart of runs per hour by outcome) and one run's timeline.
import { gql, subscribe } from "../api.js";
import { h, badge, when, table, json, problem, rendered } from "../ui.js";
import { runsPerHour } from "../chart.js";

const RUN_FIELDS = "id type tenantId status outcome reasonCode cancelRequested queuedAt startedAt completedAt";
const TYPES = ["policy.resync", "policy.import", "provider.health_check", "contacts.discover", "contacts.sync"];
const STATUSES = ["queued", "running", "completed"];
const OUTCOMES = ["pending", "succeeded", "partially_succeeded", "failed", "cancelled", "blocked"];

export async function render(main, session, id) {
  return id ? one(main, session, id) : list(main, session);
}

function select(name, label, values) {
  return h("label", label,
    h("select", { name }, h("option", { value: "" }, "any"), values.map((v) => h("option", { value: v }, v))));
}

/// The filter form's values as a RunFilter.
function filterOf(form) {
  const f = new FormData(form);
  const filter = {};
  if (f.get("type")) filter.type = f.get("type");
  if (f.get("status")) filter.statusIn = [f.get("status")];
  if (f.get("outcome")) filter.outcomeIn = [f.get("outcome")];
  if (f.get("tenant")) filter.tenantId = f.get("tenant");
  if (f.get("since")) filter.queuedAfter = new Date(Date.now() - Number(f.get("since")) * 3600e3).toISOString();
  return filter;
}

function matches(run, filter) {
  return (!filter.type || run.type === filter.type)
    && (!filter.statusIn || filter.statusIn.includes(run.status))
    && (!filter.outcomeIn || filter.outcomeIn.includes(run.outcome))
    && (!filter.tenantId || run.tenantId === filter.tenantId)
    && (!filter.queuedAfter || run.queuedAt >= filter.queuedAfter);
}

async function list(main, session) {
  const { tenants } = await gql("{ tenants(first: 100) { edges { node { id displayName } } } }");
  const names = new Map(tenants.edges.map((e) => [e.node.id, e.node.displayName]));
  const form = h("form.filters", { "aria-label": "Filter runs" },
    select("type", "Type", TYPES),
    select("status", "Status", STATUSES),
    select("outcome", "Outcome", OUTCOMES),
    h("label", "Tenant", h("select", { name: "tenant" }, h("option", { value: "" }, "any"),
      [...names].map(([id, name]) => h("option", { value: id }, name)))),
    h("label", "Queued", h("select", { name: "since" }, h("option", { value: "" }, "any time"),
      [[1, "last hour"], [24, "last 24 h"], [168, "last 7 days"]].map(([v, t]) => h("option", { value: v }, t)))));
  const live = h("span.live", { role: "status", dataset: { state: "connecting" } }, "connecting…");
  const chart = h("figure.chart", { id: "runs-chart" });
  const body = h("div", { id: "runs-list" });
  const more = h("button", { type: "button", hidden: true }, "More");
  main.replaceChildren(
    h("header.page", h("h1", "Runs"), live),
    chart, form, body, more);

  let runs = [];
  let filter = {};
  let cursor = null;
  const draw = () => {
    body.replaceChildren(table(
      ["Run", "Type", "Tenant", "Status", "Outcome", "Reason", "Queued", "Ended"],
      runs.map((r) => ({
        row: true,
        attrs: { dataset: { run: r.id, status: r.status, outcome: r.outcome } },
        cells: [
          // Run ids are UUIDv7 (time first): their end tells runs apart.
          h("a", { href: `#/runs/${r.id}`, title: r.id }, `…${r.id.slice(-12)}`),
          r.type, names.get(r.tenantId) || r.tenantId || "—",
          badge(r.status), badge(r.outcome), r.reasonCode || "", when(r.queuedAt), when(r.completedAt),
        ],
      })),
      "No run matches these filters."));
  };
  const load = async (append) => {
    const data = await gql(`query($filter: RunFilter, $after: String) {
      runs(filter: $filter, first: 25, after: $after) { pageInfo { hasNextPage endCursor }
        edges { node { ${RUN_FIELDS} } } } }`, { filter, after: append ? cursor : null });
    const page = data.runs.edges.map((e) => e.node);
    runs = append ? runs.concat(page) : page;
    cursor = data.runs.pageInfo.endCursor;
    more.hidden = !data.runs.pageInfo.hasNextPage;
    draw();
  };
  form.addEventListener("change", async () => {
    filter = filterOf(form);
    try { await load(false); } catch (e) { body.replaceChildren(problem(e)); }
  });
  more.addEventListener("click", () => load(true).catch((e) => body.replaceChildren(problem(e))));
  await load(false);
  drawChart(chart).catch((e) => chart.replaceChildren(problem(e)));
  rendered("runs");

  // Every run of the workspace as it changes: update its row, or add it on top when it
  // passes the filters.
  return subscribe(`subscription { runUpdated { ${RUN_FIELDS} } }`, {}, ({ runUpdated: run }) => {
    const i = runs.findIndex((r) => r.id === run.id);
    if (i >= 0) runs[i] = run;
    else if (matches(run, filter)) runs.unshift(run);
    else return;
    draw();
  }, (state) => {
    live.dataset.state = state;
    live.textContent = { live: "live", connecting: "connecting…", closed: "reconnecting…", forbidden: "sign in again" }[state];
  });
}

/// Runs per hour by outcome over the last 24 hours (up to 500 runs).
async function drawChart(figure) {
  const since = new Date(Date.now() - 24 * 3600e3);
  const runs = [];
  let after = null;
  for (let page = 0; page < 5; page++) {
    const data = await gql(`query($f: RunFilter, $after: String) { runs(filter: $f, first: 100, after: $after) {
      pageInfo { hasNextPage endCursor } edges { node { queuedAt outcome } } } }`,
    { f: { queuedAfter: since.toISOString() }, after });
    runs.push(...data.runs.edges.map((e) => e.node));
    if (!data.runs.pageInfo.hasNextPage) break;
    after = data.runs.pageInfo.endCursor;
  }
  figure.replaceChildren(runsPerHour(runs, since), h("figcaption", "Runs queued per hour, last 24 h, by outcome"));
}

async function one(main, session, id) {
  const query = `query($id: String!) { run(id: $id) {
    ${RUN_FIELDS} nextSteps summaryCounts failureSummary retryOf initiator
    steps { step attempt status reasonCode message summary startedAt recordedAt retryAt }
    history { position recordedAt at elapsedMs type step attempt reasonCode actor role details }
    snapshotId } }`;
  const head = h("header.page");
  const body = h("div");
  main.replaceChildren(head, body);
  let last = null;
  const draw = async () => {
    const { run } = await gql(query, { id });
    if (!run) {
      head.replaceChildren(h("h1", "Run"));
      body.replaceChildren(h("p.empty", "No such run in this workspace."));
      return;
    }
    last = run;
    const actions = [];
    if (session.operate && run.status !== "completed") {
      actions.push(h("button", { type: "button", dataset: { action: "cancel" }, onclick: () => act("cancelRun") }, "Cancel"));
    }
    if (session.operate && ["failed", "blocked", "cancelled"].includes(run.outcome)) {
      actions.push(h("button", { type: "button", dataset: { action: "retry" }, onclick: () => act("retryRun") }, "Retry"));
    }
    head.replaceChildren(
      h("h1", `${run.type} `, h("span.muted", run.id)),
      h("p", h("span", { id: "run-status" }, badge(run.status)), " ", h("span", { id: "run-outcome" }, badge(run.outcome)),
        run.reasonCode ? h("code", ` ${run.reasonCode}`) : null,
        run.cancelRequested ? h("span.badge.warn", "cancel requested") : null),
      h("p.actions", actions),
      h("dl.facts",
        h("dt", "Tenant"), h("dd", run.tenantId ? h("a", { href: `#/tenants/${encodeURIComponent(run.tenantId)}` }, run.tenantId) : "—"),
        h("dt", "Started by"), h("dd", run.initiator),
        h("dt", "Queued"), h("dd", when(run.queuedAt)),
        h("dt", "Ended"), h("dd", when(run.completedAt)),
        run.retryOf ? [h("dt", "Retry of"), h("dd", h("a", { href: `#/runs/${run.retryOf}` }, run.retryOf))] : null,
        h("dt", "Counts"), h("dd", json(run.summaryCounts))));
    const next = Array.isArray(run.nextSteps) ? run.nextSteps : [];
    body.replaceChildren(...[
      next.length ? h("section", h("h2", "Next steps"), h("ul", next.map((s) => h("li", s.href && s.href.startsWith("/") ? h("a", { href: s.href }, s.label) : s.label)))) : null,
      h("section", h("h2", "Timeline"), timeline(run)),
      h("section", h("h2", "Steps"), table(["Step", "Attempt", "Status", "Reason", "Message", "Retry at", "Recorded"],
        run.steps.map((s) => [s.step, s.attempt, badge(s.status), s.reasonCode || "", s.message || "", when(s.retryAt), when(s.recordedAt)]),
        "No step has run yet.")),
    ].filter(Boolean));
  };
  const act = async (mutation) => {
    try {
      const data = await gql(`mutation($id: String!) { ${mutation}(id: $id) { runId } }`, { id });
      const started = data[mutation].runId;
      if (mutation === "retryRun" && started !== id) location.hash = `#/runs/${started}`;
      else await draw();
    } catch (e) {
      body.prepend(problem(e));
    }
  };
  await draw();
  rendered("run");
  return subscribe("subscription($id: String) { runUpdated(runId: $id) { id status outcome } }", { id }, ({ runUpdated: r }) => {
    if (!last || r.status !== last.status || r.outcome !== last.outcome) draw().catch((e) => body.prepend(problem(e)));
  });
}

/// The run's history: one entry per event, with its step, attempt, reason and wait.
function timeline(run) {
  if (!run.history.length) return h("p.empty", "Nothing recorded yet.");
  return h("ol.timeline", { id: "timeline" }, run.history.map((e) => {
    const d = e.details || {};
    return h("li", { dataset: { type: e.type } },
      h("span.at", `+${(e.elapsedMs / 1000).toFixed(1)} s`),
      h("strong", e.type),
      e.step ? h("span", ` ${e.step}${e.attempt ? ` #${e.attempt}` : ""}`) : null,
      e.reasonCode ? h("code", ` ${e.reasonCode}`) : null,
      d.retry_at ? h("span.muted", ` waits until ${d.retry_at}`) : null,
      d.message ? h("div.muted", d.message) : null,
      e.actor ? h("span.muted", ` by ${e.actor}`) : null);
  }));
}
