// Small DOM helpers shared by the pages. Text always goes in as text nodes (never as HTML),
// so nothing the API returns can become markup.

/// `h("a.badge", {href: "#/runs"}, "text", child)`: an element with classes, attributes
/// (`on*` functions become listeners) and children (strings, nodes, arrays, null).
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  if (attrs === null || typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs)) {
    children.unshift(attrs);
    attrs = {};
  }
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/// An SVG element (charts).
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/// "3 min ago", with the exact time in the title.
export function when(iso) {
  if (!iso) return h("span.muted", "—");
  const t = new Date(iso);
  const seconds = Math.round((Date.now() - t.getTime()) / 1000);
  let text;
  if (Math.abs(seconds) < 60) text = `${seconds}s ago`;
  else if (Math.abs(seconds) < 3600) text = `${Math.round(seconds / 60)} min ago`;
  else if (Math.abs(seconds) < 86400) text = `${Math.round(seconds / 3600)} h ago`;
  else text = t.toISOString().slice(0, 16).replace("T", " ");
  return h("time", { datetime: iso, title: t.toISOString() }, text);
}

/// A status word in a colour that says how it went.
export function badge(value) {
  const word = value ? String(value).toLowerCase() : "none";
  const tone = {
    succeeded: "good", completed: "good", connected: "good", healthy: "good", active: "good",
    ok: "good", resolved: "good", linked: "good", received: "good", auto_matched: "good",
    partially_succeeded: "warn", degraded: "warn", needs_consent: "warn", running: "info",
    queued: "info", pending: "warn", open: "warn", needs_review: "warn", unknown: "muted",
    failed: "bad", blocked: "bad", error: "bad", down: "bad", cancelled: "muted",
    broken: "bad", disabled: "muted", none: "muted",
  }[word] || "muted";
  return h(`span.badge.${tone}`, { dataset: { status: word } }, word.replace(/_/g, " "));
}

/// A table with a header row; `rows` are arrays of cells. An empty list says so.
export function table(headers, rows, empty = "Nothing here yet.") {
  if (!rows.length) return h("p.empty", empty);
  return h("div.scroll",
    h("table",
      h("thead", h("tr", headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", rows.map((cells) => {
        const row = cells.row ? cells : { cells };
        return h("tr", row.attrs || {}, row.cells.map((c) => h("td", c)));
      }))));
}

/// A message in place of a page: an error, a refusal, a disabled feature.
export function problem(error) {
  const code = error && error.code;
  if (code === "forbidden") {
    return h("div.notice.bad", { role: "alert", dataset: { problem: "forbidden" } },
      h("strong", "Not allowed. "), "Your role may not see or do this.");
  }
  if (code === "feature_disabled") {
    return h("div.notice", { role: "status", dataset: { problem: "feature_disabled" } },
      h("strong", "Turned off. "),
      `The feature \u201c${error.flag || "?"}\u201d is off in this workspace; an owner or manager can turn it on.`);
  }
  return h("div.notice.bad", { role: "alert", dataset: { problem: code || "error" } },
    h("strong", "Something went wrong. "), error && error.message ? error.message : String(error));
}

/// Calls `action` once typing in `input` pauses (a search box); its failure is drawn into `into`.
export function onTyping(input, action, into) {
  let timer;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => action().catch((e) => into.replaceChildren(problem(e))), 200);
  });
}

/// Short JSON for a cell.
export function json(value) {
  if (value === null || value === undefined) return h("span.muted", "—");
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return h("code.json", text.length > 160 ? `${text.slice(0, 157)}...` : text);
}

/// Marks the page's content as rendered: tests and the timing figure read this mark.
export function rendered(page) {
  performance.mark(`tf:rendered:${page}`);
  document.body.dataset.rendered = page;
}
