// Mailboxes and the mail they received, newest first, live over `inboundEmailReceived`.
import { gql, subscribe } from "../api.js";
import { h, badge, when, table, rendered } from "../ui.js";

const EMAIL = "id subject fromAddress threadId status failureReasonCode receivedAt notifiedAt bodyPreview attachments { name size }";

export async function render(main) {
  const data = await gql(`{ mailboxes(first: 50) { edges { node { id tenantId address status degradedReasonCode
      subscriptionExpiresAt lastNotificationAt notifications received fetchFailures } } }
    inboundEmails(first: 50) { pageInfo { hasNextPage endCursor } edges { node { ${EMAIL} } } } }`);
  const mailboxes = data.mailboxes.edges.map((e) => e.node);
  let emails = data.inboundEmails.edges.map((e) => e.node);
  const list = h("div", { id: "emails" });
  const draw = () => list.replaceChildren(table(["Received", "From", "Subject", "Thread", "Attachments", "Status"],
    emails.map((m) => [when(m.receivedAt || m.notifiedAt), m.fromAddress || "—",
      h("details", h("summary", m.subject || "(no subject)"), h("p.preview", m.bodyPreview || "")),
      m.threadId ? h("code", m.threadId.slice(0, 10)) : "—",
      m.attachments.map((a) => `${a.name} (${a.size} B)`).join(", ") || "—",
      [badge(m.status), m.failureReasonCode ? h("code", ` ${m.failureReasonCode}`) : ""]]),
    "No mail received yet."));
  main.replaceChildren(
    h("header.page", h("h1", "Mail")),
    h("section", h("h2", "Mailboxes"), table(
      ["Address", "Tenant", "Status", "Subscription expires", "Last notification", "Received", "Fetch failures"],
      mailboxes.map((b) => [b.address, b.tenantId, [badge(b.status), b.degradedReasonCode ? h("code", ` ${b.degradedReasonCode}`) : ""],
        when(b.subscriptionExpiresAt), when(b.lastNotificationAt), b.received, b.fetchFailures]),
      "No mailbox: an owner or manager adds one with addMailbox.")),
    h("section", h("h2", "Inbound mail"), list));
  draw();
  rendered("mail");
  return subscribe(`subscription { inboundEmailReceived { ${EMAIL} } }`, {}, ({ inboundEmailReceived: m }) => {
    emails = [m, ...emails.filter((x) => x.id !== m.id)];
    draw();
  });
}
