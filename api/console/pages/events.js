// Events for auditors: the log in global order with filters and paging, and the state of
// the workspace's hash chain.
import { gql } from "../api.js";
import { h, badge, when, table, json, rendered } from "../ui.js";

export async function render(main) {
  const { auditChain: chain } = await gql(`{ auditChain { sealedPosition sealedEvents headHash
    lastVerification { at ok firstBad eventsChecked throughPosition } } }`);
  const v = chain.lastVerification;
  const chainState = v ? (v.ok ? "ok" : "broken") : "unknown";
  const field = (name, label, type = "text") => h("label", label, h("input", { name, type }));
  const form = h("form.filters", { "aria-label": "Filter events" },
    field("aggregateType", "Aggregate type"), field("aggregateId", "Aggregate id"), field("eventType", "Event type"),
    field("tenantId", "Tenant"), field("actor", "Actor"), field("correlationId", "Correlation id"),
    field("recordedAfter", "After", "datetime-local"), field("recordedBefore", "Before", "datetime-local"),
    h("label", "Order", h("select", { name: "order" },
      h("option", { value: "OLDEST_FIRST" }, "oldest first"), h("option", { value: "NEWEST_FIRST" }, "newest first"))),
    h("button", { type: "submit" }, "Apply"));
  const list = h("div", { id: "events" });
  const pager = h("nav.pager", { "aria-label": "Pages" });
  main.replaceChildren(
    h("header.page", h("h1", "Events")),
    h("section", { id: "chain", dataset: { chain: chainState } }, h("h2", "Hash chain"),
      h("dl.facts",
        h("dt", "Status"), h("dd", badge(chainState), v ? [" verified ", when(v.at), `, ${v.eventsChecked} events`] : " never verified (run tenantflow verify)"),
        v && v.firstBad ? [h("dt", "First bad event"), h("dd", h("code", v.firstBad))] : null,
        h("dt", "Sealed"), h("dd", `${chain.sealedEvents} events, up to position ${chain.sealedPosition ?? "—"}`),
        h("dt", "Head"), h("dd", chain.headHash ? h("code.hash", `${chain.sealedPosition}:${chain.headHash}`) : "—"))),
    form, list, pager);

  const cursors = [null];
  let page = 0;
  const load = async () => {
    const f = new FormData(form);
    const filter = {};
    for (const k of ["aggregateType", "aggregateId", "eventType", "tenantId", "actor", "correlationId"]) {
      if (f.get(k)) filter[k] = f.get(k);
    }
    for (const k of ["recordedAfter", "recordedBefore"]) {
      if (f.get(k)) filter[k] = new Date(f.get(k)).toISOString();
    }
    const { events } = await gql(`query($f: EventFilter, $o: EventOrder, $after: String) {
      events(filter: $f, order: $o, first: 50, after: $after) { pageInfo { hasNextPage endCursor }
        edges { node { globalPosition recordedAt aggregateType aggregateId sequence eventType metadata payload } } } }`,
    { f: filter, o: f.get("order"), after: cursors[page] });
    cursors[page + 1] = events.pageInfo.endCursor;
    list.replaceChildren(table(["Position", "Recorded", "Stream", "Seq", "Event", "Actor", "Payload"],
      events.edges.map(({ node: e }) => [e.globalPosition, when(e.recordedAt), h("code", `${e.aggregateType}/${e.aggregateId}`),
        e.sequence, e.eventType, e.metadata && e.metadata.actor ? `${e.metadata.actor} (${e.metadata.role})` : "—", json(e.payload)]),
      "No event matches these filters."));
    pager.replaceChildren(
      h("button", { type: "button", disabled: page === 0, onclick: () => { page -= 1; load(); } }, "Previous"),
      h("span", ` page ${page + 1} `),
      h("button", { type: "button", disabled: !events.pageInfo.hasNextPage, onclick: () => { page += 1; load(); } }, "Next"));
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); page = 0; load(); });
  await load();
  rendered("events");
}
