// Charts drawn as inline SVG; colours come from the stylesheet (classes), so they follow
// the light or dark theme.
import { svg, h } from "./ui.js";

const OUTCOMES = ["succeeded", "partially_succeeded", "failed", "blocked", "cancelled", "pending"];

/// Stacked bars: runs queued per hour since `since`, one colour per outcome.
export function runsPerHour(runs, since) {
  const hours = 24;
  const start = Math.floor(since.getTime() / 3600e3);
  const buckets = Array.from({ length: hours + 1 }, () => Object.fromEntries(OUTCOMES.map((o) => [o, 0])));
  for (const run of runs) {
    const i = Math.floor(new Date(run.queuedAt).getTime() / 3600e3) - start;
    if (i >= 0 && i <= hours && run.outcome in buckets[i]) buckets[i][run.outcome] += 1;
  }
  const max = Math.max(1, ...buckets.map((b) => OUTCOMES.reduce((n, o) => n + b[o], 0)));
  const width = 600;
  const height = 160;
  const pad = { left: 32, bottom: 20, top: 8 };
  const bar = (width - pad.left) / buckets.length;
  const scale = (height - pad.bottom - pad.top) / max;
  const bars = [];
  buckets.forEach((b, i) => {
    let y = height - pad.bottom;
    for (const outcome of OUTCOMES) {
      if (!b[outcome]) continue;
      const tall = b[outcome] * scale;
      y -= tall;
      bars.push(svg("rect", {
        class: `bar ${outcome}`, x: pad.left + i * bar + 1, y, width: Math.max(1, bar - 2), height: tall,
      }, svg("title", {}, `${new Date((start + i) * 3600e3).toISOString().slice(11, 16)}: ${b[outcome]} ${outcome.replace(/_/g, " ")}`)));
    }
  });
  const axis = [
    svg("line", { class: "axis", x1: pad.left, y1: height - pad.bottom, x2: width, y2: height - pad.bottom }),
    svg("text", { class: "tick", x: pad.left - 4, y: pad.top + 10, "text-anchor": "end" }, String(max)),
    svg("text", { class: "tick", x: pad.left - 4, y: height - pad.bottom, "text-anchor": "end" }, "0"),
    ...[0, 6, 12, 18, 24].map((i) => svg("text", {
      class: "tick", x: pad.left + i * bar + bar / 2, y: height - 4, "text-anchor": "middle",
    }, new Date((start + i) * 3600e3).toISOString().slice(11, 16))),
  ];
  const total = runs.length;
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${total} runs in the last 24 hours, per hour by outcome`,
  }, axis, bars);
  const legend = h("ul.legend", OUTCOMES.map((o) => h("li", h(`span.swatch.${o}`), o.replace(/_/g, " "))));
  return h("div", chart, legend);
}
