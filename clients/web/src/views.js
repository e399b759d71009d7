// DOM for jobs. Text from documents goes through textContent only (prompts are user input).

import { resultUrl } from "./config.js";
import { ACTIVE, STATUS_LABELS } from "./jobs.js";

/** Build an element: el("p", {class: "x"}, "text", child…). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(timestamp) {
  const date = timestamp?.toDate?.();
  return date ? date.toLocaleString() : "";
}

let modelViewer;
function loadModelViewer() {
  // three.js is large: load the <model-viewer> element only when a GLB is on screen.
  modelViewer ??= import("@google/model-viewer");
  return modelViewer;
}

function resultView(config, job) {
  const result = job.result;
  if (job.status !== "completed" || !result?.downloadUrl) return null;
  const src = resultUrl(config, result.downloadUrl);
  if (job.kind === "model") {
    loadModelViewer().catch(() => {});
    return el("figure", { class: "result" },
      el("model-viewer", { class: "model", src, alt: `3D model: ${job.prompt}`, "camera-controls": true,
        "auto-rotate": true, "shadow-intensity": "1" }),
      el("figcaption", {}, el("a", { href: src, download: "result.glb" }, "Download GLB"),
        ` · ${formatBytes(result.bytes)}`));
  }
  return el("figure", { class: "result" },
    el("img", { class: "image", src, alt: job.prompt, loading: "lazy" }),
    el("figcaption", {}, el("a", { href: src, download: "result.png" }, "Download PNG"),
      ` · ${formatBytes(result.bytes)}`));
}

function formatBytes(bytes) {
  if (typeof bytes !== "number") return "";
  return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
}

/**
 * One job as a card.
 * @param {any} config
 * @param {import("./jobs.js").JobWithId} job
 * @param {{onCancel: (id: string) => void, onRetry: (id: string) => void, detail?: boolean}} actions
 */
export function jobCard(config, job, actions) {
  const progress = Math.max(0, Math.min(100, Number(job.progress) || 0));
  const active = ACTIVE.has(job.status);
  return el("article", { class: `job status-${job.status}`, "data-job-id": job.id, "data-status": job.status,
    "data-progress": progress },
  el("header", {},
    el("span", { class: "kind" }, job.kind === "model" ? "3D model" : "Image"),
    el("span", { class: "badge" }, STATUS_LABELS[job.status] ?? job.status)),
  el("p", { class: "prompt" }, job.prompt),
  active || job.status === "completed"
    ? el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": progress, "aria-label": "Progress" },
    el("div", { class: "fill", style: `width: ${progress}%` }))
    : null,
  active ? el("p", { class: "stage" }, `${job.stage || "queued"} · ${progress}%`) : null,
  job.status === "pending" && job.queueReason
    ? el("p", { class: "queue", "data-queue-reason": job.queueReason }, queueText(job)) : null,
  job.status === "failed"
    ? el("div", { class: "error", role: "alert" },
      el("p", {}, job.error?.message || "Something went wrong."),
      el("button", { class: "retry", type: "button", onclick: () => actions.onRetry(job.id) }, "Retry"))
    : null,
  resultView(config, job),
  el("footer", {},
    actions.detail ? null : el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, "data-link": true }, "Open"),
    active ? el("button", { class: "cancel", type: "button", onclick: () => actions.onCancel(job.id) }, "Cancel")
      : null,
    el("time", {}, when(job.createdAt))));
}

/** Why a job waits to start (the fair queue), and roughly how many go first. */
export function queueText(job) {
  const why = job.queueReason === "provider_capacity"
    ? "Waiting for the generator to free up"
    : "Waiting for your other jobs to finish (your plan's limit)";
  return job.queuePosition ? `${why} · about ${job.queuePosition} ahead` : why;
}

/** A key that changes whenever the card would look different. */
export function cardKey(job) {
  return [job.status, job.stage, job.progress, job.queueReason, job.queuePosition,
    job.error?.message, job.result?.downloadUrl,
    job.createdAt?.toMillis?.()].join("|");
}
