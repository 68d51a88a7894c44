// Contact sync: the reconciliation queue (resolved from here), the tenant mappings and the
// contact books. Each section shows its own refusal (a feature turned off, say).
import { gql } from "../api.js";
import { h, badge, when, table, problem, rendered, onTyping } from "../ui.js";

export async function render(main, session) {
  const queue = h("section", { id: "reconciliation" });
  const mappings = h("section", { id: "mappings" });
  const contacts = h("section", { id: "contacts" });
  main.replaceChildren(h("header.page", h("h1", "Contacts")), queue, mappings, contacts);
  await Promise.all([
    drawQueue(queue, session).catch((e) => queue.replaceChildren(h("h2", "Reconciliation queue"), problem(e))),
    drawMappings(mappings).catch((e) => mappings.replaceChildren(h("h2", "Tenant mappings"), problem(e))),
    drawContacts(contacts).catch((e) => contacts.replaceChildren(h("h2", "Contacts"), problem(e))),
  ]);
  rendered("contacts");
}

async function drawQueue(section, session) {
  const { reconciliationItems } = await gql(`{ reconciliationItems(status: open, first: 50) { edges { node {
    id status upstreamDisplayName upstreamEmails queuedAt candidates { id name email } } } } }`);
  const items = reconciliationItems.edges.map((e) => e.node);
  const resolve = async (item, action, contactId, cell) => {
    try {
      const { resolveReconciliationItem: r } = await gql(
        "mutation($id: String!, $a: ReconciliationAction!, $c: String) { resolveReconciliationItem(id: $id, action: $a, contactId: $c) { resolution resolvedBy } }",
        { id: item.id, a: action, c: contactId });
      cell.replaceChildren(badge(r.resolution), ` by ${r.resolvedBy}`);
      cell.closest("tr").dataset.resolved = r.resolution;
    } catch (e) {
      cell.replaceChildren(problem(e));
    }
  };
  section.replaceChildren(h("h2", "Reconciliation queue"), table(
    ["Entra user", "Emails", "Queued", "Candidates", "Resolve"],
    items.map((item) => {
      const cell = h("div.actions");
      if (session.manage) {
        const choice = h("select", { "aria-label": `Contact for ${item.upstreamDisplayName || item.id}` },
          item.candidates.map((c) => h("option", { value: c.id }, `${c.name}${c.email ? ` <${c.email}>` : ""}`)));
        cell.append(
          item.candidates.length ? choice : "",
          item.candidates.length ? h("button", { type: "button", dataset: { action: "link" }, onclick: () => resolve(item, "link", choice.value, cell) }, "Link") : "",
          h("button", { type: "button", dataset: { action: "create_new" }, onclick: () => resolve(item, "create_new", null, cell) }, "Create new"),
          h("button.secondary", { type: "button", dataset: { action: "ignore" }, onclick: () => resolve(item, "ignore", null, cell) }, "Ignore"));
      } else {
        cell.append(h("span.muted", "owners and managers resolve"));
      }
      return { row: true, attrs: { dataset: { item: item.id } }, cells: [
        item.upstreamDisplayName || "—", item.upstreamEmails.join(", "), when(item.queuedAt),
        item.candidates.map((c) => c.name).join(", ") || "none", cell] };
    }),
    "Nobody waits for a decision."));
}

async function drawMappings(section) {
  const { tenantMappings } = await gql(`{ tenantMappings(first: 100) { edges { node {
    id displayName defaultDomain state source confirmedClient { name } proposal { state reason client { name } }
    } } } }`);
  section.replaceChildren(h("h2", "Tenant mappings"), table(
    ["Tenant", "Domain", "State", "Client", "Proposal", "Source"],
    tenantMappings.edges.map(({ node: m }) => [m.displayName, m.defaultDomain, badge(m.state),
      m.confirmedClient ? m.confirmedClient.name : "—",
      m.proposal ? [badge(m.proposal.state), ` ${m.proposal.reason}`, m.proposal.client ? ` → ${m.proposal.client.name}` : ""] : "—",
      m.source]),
    "No tenant discovered yet."));
}

async function drawContacts(section) {
  const search = h("input", { type: "search", placeholder: "Name or email", "aria-label": "Search contacts" });
  const list = h("div");
  section.replaceChildren(h("h2", "Contacts"), h("form.filters", { role: "search", onsubmit: (e) => e.preventDefault() }, search), list);
  const load = async () => {
    const { contacts } = await gql(`query($s: String) { contacts(search: $s, first: 50) { edges { node {
      id name email jobTitle status linked updatedAt client { name } } } } }`, { s: search.value || null });
    list.replaceChildren(table(["Name", "Email", "Client", "Title", "Status", "Linked", "Updated"],
      contacts.edges.map(({ node: c }) => [c.name, c.email || "—", c.client ? c.client.name : "—", c.jobTitle || "",
        badge(c.status), c.linked ? "yes" : "no", when(c.updatedAt)]),
      search.value ? "No contact matches." : "No contact yet."));
  };
  onTyping(search, load, list);
  await load();
}
