// The console's shell: sign-in, navigation and a hash router over the pages.
import { gql, token, setToken, forgetToken, ApiError } from "./api.js";
import { h, problem } from "./ui.js";
import * as tenants from "./pages/tenants.js";
import * as runs from "./pages/runs.js";
import * as contacts from "./pages/contacts.js";
import * as mail from "./pages/mail.js";
import * as events from "./pages/events.js";
import * as query from "./pages/query.js";

const PAGES = [
  { path: "tenants", label: "Tenants", page: tenants },
  { path: "runs", label: "Runs", page: runs },
  { path: "contacts", label: "Contacts", page: contacts },
  { path: "mail", label: "Mail", page: mail },
  { path: "events", label: "Events", page: events },
  { path: "query", label: "Query", page: query },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let session = null;
let leave = null;

/// What the signed-in role may do, as the API's roles say (README "Roles").
function abilities(me) {
  const role = me.role;
  return {
    me,
    operate: ["owner", "manager", "operator"].includes(role),
    manage: ["owner", "manager"].includes(role),
  };
}

function signIn(message) {
  session = null;
  nav.replaceChildren();
  who.replaceChildren();
  const input = h("textarea", {
    id: "token", name: "token", rows: 4, required: true, autocomplete: "off", spellcheck: "false",
    placeholder: "eyJhbGciOiJIUzI1NiJ9...",
  });
  const form = h("form.signin", {
    onsubmit: async (event) => {
      event.preventDefault();
      setToken(input.value);
      await start();
    },
  },
  h("h1", "Sign in"),
  h("p", "Paste a bearer token for your workspace (", h("code", "tenantflow token --workspace W --role R"),
    " mints one). It is kept in this tab's session storage only."),
  message ? h("div.notice.bad", { role: "alert", dataset: { problem: "signin" } }, message) : null,
  h("label", { for: "token" }, "Token"),
  input,
  h("button", { type: "submit" }, "Sign in"));
  main.replaceChildren(form);
  input.focus();
}

function drawNav(current) {
  nav.replaceChildren(...PAGES.map((p) => h("a", {
    href: `#/${p.path}`,
    "aria-current": p.path === current ? "page" : null,
  }, p.label)));
  who.replaceChildren(
    h("span", { title: session.me.subject }, `${session.me.workspace} · `, h("strong", { id: "role" }, session.me.role)),
    h("button.link", {
      type: "button",
      onclick: () => { forgetToken(); location.hash = ""; signIn(); },
    }, "Sign out"));
}

async function route() {
  if (!session) return;
  if (leave) { leave(); leave = null; }
  const fallback = location.pathname === "/graphql" ? "query" : "tenants";
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const name = parts[0] || fallback;
  const entry = PAGES.find((p) => p.path === name) || PAGES[0];
  drawNav(entry.path);
  main.replaceChildren(h("p.muted", { role: "status" }, "Loading…"));
  main.focus({ preventScroll: true });
  try {
    leave = (await entry.page.render(main, session, parts.slice(1).join("/"))) || null;
  } catch (error) {
    if (error instanceof ApiError && error.code === "unauthenticated") {
      forgetToken();
      signIn(`${error.message}. Paste a new token.`);
    } else {
      main.replaceChildren(problem(error));
    }
  }
}

async function start() {
  if (!token()) return signIn();
  try {
    const { me } = await gql("{ me { subject workspace role } }");
    session = abilities(me);
    document.body.dataset.role = me.role;
    await route();
  } catch (error) {
    forgetToken();
    signIn(error instanceof ApiError && error.code === "unauthenticated"
      ? `${error.message}. Paste a new token.`
      : error.message);
  }
}

window.addEventListener("hashchange", route);
start();
