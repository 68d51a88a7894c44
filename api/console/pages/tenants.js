// Tenants: the list (search, connection health, last resync, licenses) and one tenant
// (connections, intent, alerts, snapshots with a side-by-side diff).
import { gql } from "../api.js";
import { h, badge, when, table, problem, rendered, onTyping } from "../ui.js";

export async function render(main, session, id) {
  return id ? one(main, session, id) : list(main, session);
}

async function list(main, session) {
  const search = h("input", { type: "search", name: "search", placeholder: "Name, domain or tenant id", "aria-label": "Search tenants" });
  const notice = h("div", { role: "status" });
  const body = h("div", { id: "tenant-list" });
  main.replaceChildren(
    h("header.page", h("h1", "Tenants"), h("form.filters", { role: "search", onsubmit: (e) => e.preventDefault() }, search)),
    notice, body);

  const resync = async (tenant) => {
    try {
      const { resyncTenant: r } = await gql(
        "mutation($id: String!) { resyncTenant(id: $id) { runId status reasonCode } }", { id: tenant.id });
      location.hash = `#/runs/${r.runId}`;
    } catch (e) {
      notice.replaceChildren(problem(e));
    }
  };

  const load = async () => {
    const { tenants } = await gql(`query($search: String) { tenants(search: $search, first: 100) {
      edges { node { id displayName primaryDomain status lastResyncedAt
        connections { id displayName status healthStatus isDefault lastHealthCheckAt lastErrorReasonCode } } } } }`,
    { search: search.value || null });
    const nodes = tenants.edges.map((e) => e.node);
    const licenses = await licensesOf(nodes.map((t) => t.id));
    body.replaceChildren(table(
      ["Tenant", "Domain", "Status", "Connection", "Health", "Last resync", "Licenses", ""],
      nodes.map((t, i) => {
        const c = t.connections.find((x) => x.isDefault) || t.connections[0];
        const l = licenses[i];
        return {
          row: true,
          attrs: { dataset: { tenant: t.id } },
          cells: [
            h("a", { href: `#/tenants/${encodeURIComponent(t.id)}` }, t.displayName),
            t.primaryDomain, badge(t.status),
            c ? badge(c.status) : h("span.muted", "none"),
            c ? badge(c.healthStatus) : "",
            when(t.lastResyncedAt),
            l ? [l.caP1 ? "CA P1 " : "", l.caP2 ? "CA P2" : "", !l.caP1 && !l.caP2 ? "no CA license" : ""] : h("span.muted", "not read yet"),
            session.operate && t.status === "active"
              ? h("button", { type: "button", dataset: { action: "resync" }, onclick: () => resync(t) }, "Resync")
              : null,
          ],
        };
      }),
      search.value ? "No tenant matches." : "No tenant is registered in this workspace yet."));
  };
  onTyping(search, load, body);
  await load();
  rendered("tenants");
}

/// Each tenant's licenses, in one request (aliases).
async function licensesOf(ids) {
  if (!ids.length) return [];
  const vars = Object.fromEntries(ids.map((id, i) => [`t${i}`, id]));
  const decl = ids.map((_, i) => `$t${i}: String!`).join(", ");
  const body = ids.map((_, i) => `l${i}: licenses(tenantId: $t${i}) { caP1 caP2 refreshedAt }`).join(" ");
  const data = await gql(`query(${decl}) { ${body} }`, vars);
  return ids.map((_, i) => data[`l${i}`]);
}

async function one(main, session, id) {
  const data = await gql(`query($id: String!) {
    tenant(id: $id) { id displayName primaryDomain status registeredAt lastResyncedAt entraTenantId
      policyIntent { snapshotId hash seededAt }
      connections { id displayName status healthStatus consentGranted isDefault credentialFingerprint
        lastHealthCheckAt lastErrorReasonCode lastErrorMessage graphEndpoint } }
    snapshots(tenantId: $id, first: 20) { edges { node { id hash policyCount source takenAt runId diff } } }
    alerts(tenantId: $id, first: 20) { edges { node { snapshotId kind raisedAt acknowledgedAt acknowledgedBy } } }
    licenses(tenantId: $id) { caP1 caP2 refreshedAt } }`, { id });
  const t = data.tenant;
  if (!t) {
    main.replaceChildren(h("h1", "Tenant"), h("p.empty", "No such tenant in this workspace."));
    return;
  }
  const snapshots = data.snapshots.edges.map((e) => e.node);
  const diffView = h("section", { id: "diff" });
  const l = data.licenses;
  main.replaceChildren(
    h("header.page", h("h1", t.displayName), badge(t.status)),
    h("dl.facts",
      h("dt", "Domain"), h("dd", t.primaryDomain),
      h("dt", "Entra tenant"), h("dd", h("code", t.entraTenantId)),
      h("dt", "Registered"), h("dd", when(t.registeredAt)),
      h("dt", "Last resync"), h("dd", when(t.lastResyncedAt)),
      h("dt", "Licenses"), h("dd", l ? `CA P1 ${l.caP1 ? "yes" : "no"}, CA P2 ${l.caP2 ? "yes" : "no"} (read ${new Date(l.refreshedAt).toISOString().slice(0, 16)})` : "not read yet"),
      h("dt", "Intent"), h("dd", t.policyIntent
        ? [h("code", t.policyIntent.hash.slice(0, 12)), " seeded ", when(t.policyIntent.seededAt)]
        : "none (an import seeds it)")),
    h("section", h("h2", "Connections"), table(["Name", "Status", "Health", "Default", "Consent", "Credential", "Graph", "Last error"],
      t.connections.map((c) => [c.displayName, badge(c.status), badge(c.healthStatus), c.isDefault ? "yes" : "",
        c.consentGranted ? "granted" : "missing", c.credentialFingerprint ? h("code", c.credentialFingerprint) : "none",
        c.graphEndpoint, c.lastErrorReasonCode ? h("code", c.lastErrorReasonCode) : ""]),
      "No connection: add one to operate this tenant.")),
    h("section", h("h2", "Alerts"), alertTable(session, id, data.alerts.edges.map((e) => e.node))),
    h("section", h("h2", "Policy snapshots"), table(["Taken", "Source", "Policies", "Hash", "Changes", ""],
      snapshots.map((s, i) => ({
        row: true,
        attrs: { dataset: { snapshot: s.id } },
        cells: [when(s.takenAt), s.source, s.policyCount, h("code", s.hash.slice(0, 12)), summary(s.diff),
          s.diff && i + 1 < snapshots.length
            ? h("button", { type: "button", dataset: { action: "diff" }, onclick: () => showDiff(diffView, snapshots[i + 1], s) }, "Compare")
            : null],
      })),
      "No snapshot yet: a resync takes the first.")),
    diffView);
  rendered("tenant");
}

function summary(diff) {
  if (!diff) return h("span.muted", "first");
  const n = (k) => (diff[k] || []).length;
  return `+${n("added")} −${n("removed")} ~${n("modified")}`;
}

function alertTable(session, tenantId, alerts) {
  return table(["Kind", "Raised", "Snapshot", "Acknowledged", ""], alerts.map((a) => [
    a.kind, when(a.raisedAt), h("code", { title: a.snapshotId }, `…${a.snapshotId.slice(-12)}`),
    a.acknowledgedAt ? [when(a.acknowledgedAt), ` by ${a.acknowledgedBy}`] : badge("open"),
    session.operate && !a.acknowledgedAt ? h("button", {
      type: "button", dataset: { action: "acknowledge" },
      onclick: async (event) => {
        try {
          await gql("mutation($t: String!, $s: String!) { acknowledgeAlert(tenantId: $t, snapshotId: $s) { snapshotId } }",
            { t: tenantId, s: a.snapshotId });
          event.target.replaceWith(badge("resolved"));
        } catch (e) { event.target.replaceWith(problem(e)); }
      },
    }, "Acknowledge") : null,
  ]), "No alert.");
}

/// The value at a dotted camelCase path (`conditions.users.excludeUsers`).
function at(policy, path) {
  return path.split(".").reduce((v, k) => (v === undefined || v === null ? undefined : v[k]), policy);
}

function shown(value) {
  return value === undefined ? h("span.muted", "(absent)") : h("code", JSON.stringify(value, null, 1));
}

/// The snapshot `after` against `before`: added and removed policies, and each changed field
/// of a modified policy with its value before and after, side by side.
async function showDiff(section, before, after) {
  section.replaceChildren(h("p.muted", "Loading…"));
  try {
    const q = `query($a: ID!, $b: ID!) {
      a: node(id: $a) { ... on PolicySnapshot { policies takenAt } }
      b: node(id: $b) { ... on PolicySnapshot { policies takenAt } } }`;
    const { a, b } = await gql(q, { a: before.id, b: after.id });
    const byId = (list) => new Map((list || []).map((p) => [p.id, p]));
    const old = byId(a.policies);
    const now = byId(b.policies);
    const rows = [];
    for (const m of after.diff.modified || []) {
      for (const field of m.changed_fields) {
        rows.push({ row: true, attrs: { dataset: { field } }, cells: [m.display_name, h("code", field),
          shown(at(old.get(m.id), field)), shown(at(now.get(m.id), field))] });
      }
    }
    for (const p of after.diff.added || []) rows.push([p.display_name, "added", h("span.muted", "—"), h("span.badge.good", "new policy")]);
    for (const p of after.diff.removed || []) rows.push([p.display_name, "removed", h("span.badge.bad", "was here"), h("span.muted", "—")]);
    section.replaceChildren(
      h("h2", "What changed"),
      h("p.muted", `${new Date(a.takenAt).toISOString().slice(0, 19)} → ${new Date(b.takenAt).toISOString().slice(0, 19)}`),
      h("div.diff", table(["Policy", "Field", "Before", "After"], rows, "The two snapshots hold the same policies.")));
    section.scrollIntoView({ block: "nearest" });
    rendered("diff");
  } catch (e) {
    section.replaceChildren(problem(e));
  }
}
