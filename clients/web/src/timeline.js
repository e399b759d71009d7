// A job's timeline (GET /v1/jobs/{jobId}/timeline, docs/timeline.md) as a waterfall: one row
// per step with its name, the milliseconds since the job was accepted, the gap since the step
// before, and a bar over that gap on a shared scale — what `kiln trace` draws in a terminal.

import { el } from "./views.js";

/** @typedef {import("../../../docs/generated/kiln").JobTimeline} JobTimeline */

const ms = (value) => `${value.toFixed(1)} ms`;

/**
 * The waterfall of one timeline (pure DOM; no fetching).
 * @param {JobTimeline} timeline
 */
export function waterfall(timeline) {
  if (!timeline.steps.length) {
    return el("p", { class: "empty" }, "No timeline was recorded for this job.");
  }
  const total = Math.max(timeline.totalMs, 1e-9);
  const pct = (value) => `${Math.min(100, Math.max(0, (value / total) * 100)).toFixed(2)}%`;
  return el("div", { class: "waterfall", role: "table", "aria-label": "Job timeline" },
    el("div", { class: "wf-row wf-head", role: "row" },
      el("span", { role: "columnheader" }, "Step"),
      el("span", { role: "columnheader", class: "num" }, "Since accepted"),
      el("span", { role: "columnheader", class: "num" }, "Took"),
      el("span", { role: "columnheader" }, "")),
    timeline.steps.map((step) => el("div", { class: "wf-row", role: "row", "data-step": step.step,
      "data-since-ms": step.sinceAcceptedMs, title: step.at },
    el("span", { role: "cell", class: "wf-name" }, step.step),
    el("span", { role: "cell", class: "num" }, ms(step.sinceAcceptedMs)),
    el("span", { role: "cell", class: "num" }, ms(step.gapMs)),
    el("span", { role: "cell", class: "wf-track" },
      el("span", { class: step.gapMs > 0 ? "wf-bar" : "wf-bar wf-tick",
        style: `left: ${pct(step.sinceAcceptedMs - step.gapMs)}; width: ${pct(step.gapMs)}` })))),
    el("p", { class: "wf-total" }, `${timeline.steps.length} steps over ${ms(timeline.totalMs)}`));
}

/**
 * A "Timeline" panel for one job: closed at first; opening it fetches the timeline with the
 * user's ID token, and `refresh()` fetches it again while it is open (the job moved on).
 * @param {import("./api.js").KilnApi} api
 * @param {string} jobId
 */
export function timelinePanel(api, jobId) {
  const body = el("div", { class: "wf-body" });
  const panel = el("details", { class: "timeline", id: "timeline", "data-timeline-for": jobId },
    el("summary", {}, "Timeline"), body);
  let asked = 0;
  async function refresh() {
    if (!panel.open) return;
    const mine = ++asked;
    if (!body.firstChild) body.replaceChildren(el("p", { class: "empty" }, "Loading the timeline…"));
    try {
      const timeline = await api.timeline(jobId);
      if (mine === asked) body.replaceChildren(waterfall(timeline));
    } catch (error) {
      if (mine === asked) body.replaceChildren(el("p", { class: "notice error", role: "alert" }, error.message));
    }
  }
  panel.addEventListener("toggle", refresh);
  return { node: panel, refresh };
}
