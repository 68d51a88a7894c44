// A query page in place of GraphiQL (which loaded its code from a CDN): a query, its
// variables, the answer as the API gave it.
import { request } from "../api.js";
import { h, problem, rendered } from "../ui.js";

const EXAMPLE = "{\n  me { workspace role }\n  tenants(first: 5) { edges { node { displayName lastResyncedAt } } }\n}\n";
const KEY = "tenantflow.query";

export async function render(main) {
  const query = h("textarea", { id: "query-text", rows: 14, spellcheck: "false", "aria-label": "Query" });
  query.value = sessionStorage.getItem(KEY) || EXAMPLE;
  const variables = h("textarea", { id: "query-variables", rows: 4, spellcheck: "false", "aria-label": "Variables (JSON)" });
  variables.value = "{}";
  const answer = h("pre.answer", { id: "query-answer", "aria-live": "polite" });
  const run = async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, query.value);
    let vars;
    try {
      vars = JSON.parse(variables.value || "{}");
    } catch (e) {
      answer.replaceChildren(problem(new Error(`the variables are not JSON: ${e.message}`)));
      return;
    }
    try {
      answer.textContent = JSON.stringify(await request(query.value, vars), null, 2);
    } catch (e) {
      answer.replaceChildren(problem(e));
    }
  };
  const form = h("form.query", { onsubmit: run },
    h("label", { for: "query-text" }, "Query"), query,
    h("label", { for: "query-variables" }, "Variables"), variables,
    h("button", { type: "submit", title: "Ctrl+Enter" }, "Run"));
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(e);
  });
  main.replaceChildren(
    h("header.page", h("h1", "Query"), h("p.muted", "POST /graphql with your token; the schema is api/schema.graphql.")),
    h("div.split", form, answer));
  rendered("query");
}
