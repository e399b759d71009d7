// Kiln reference web app: submit jobs through the HTTP API, watch them live in Firestore,
// open results, and open /jobs/{jobId} directly (the link a completion push carries).

import { initializeApp } from "firebase/app";
import { connectFirestoreEmulator, getFirestore } from "firebase/firestore";

import { KilnApi } from "./api.js";
import { loadConfig } from "./config.js";
import { watchJob, watchJobs } from "./jobs.js";
import { firebaseSession, localSession, localUid, rememberLocalUid } from "./session.js";
import "./style.css";
import { timelinePanel } from "./timeline.js";
import { cardKey, el, jobCard } from "./views.js";

const root = document.getElementById("app");
let stopWatching = () => {};
/** @type {{config: any, db: any, api: KilnApi, session: any}} */
let ctx;

function notice(message, kind = "error") {
  const box = document.getElementById("notice");
  if (!box) return;
  box.className = `notice ${kind}`;
  box.textContent = message;
  box.hidden = !message;
}

async function act(promise, done) {
  try {
    await promise;
    if (done) notice(done, "info");
  } catch (error) {
    notice(error.message);
  }
}

const actions = {
  onCancel: (id) => act(ctx.api.cancel(id), "Canceled."),
  onRetry: (id) => act(ctx.api.retry(id), "Retrying…"),
};

// --- routes ---------------------------------------------------------------------------------

// A job id as Kiln makes them; a deep link naming anything else names no job (an id
// Firestore reserves, `__…__`, would fail the listener with its raw message).
const JOB_ID = /^(?!__.*__$)[A-Za-z0-9_-]{1,64}$/;

function route() {
  stopWatching();
  stopWatching = () => {};
  const match = location.pathname.match(/^\/jobs\/([^/]+)\/?$/);
  root.replaceChildren(el("p", { id: "notice", class: "notice", hidden: true, role: "status" }));
  if (!match) return showList();
  let jobId = null;
  try {
    jobId = decodeURIComponent(match[1]);
  } catch {} // a malformed %-escape
  if (jobId !== null && JOB_ID.test(jobId)) showJob(jobId);
  else root.append(backLink(), missing(jobId ?? match[1]));
}

export function navigate(path) {
  history.pushState(null, "", path);
  route();
}

document.addEventListener("click", (event) => {
  const link = event.target instanceof Element ? event.target.closest("a[data-link]") : null;
  if (!link || event.metaKey || event.ctrlKey || event.shiftKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", route);

function submitForm() {
  const kind = el("select", { name: "kind", id: "kind" },
    el("option", { value: "image" }, "Image (PNG)"), el("option", { value: "model" }, "3D model (GLB)"));
  const aspect = el("select", { name: "aspectRatio", id: "aspectRatio" },
    ["1:1", "4:3", "3:4", "16:9", "9:16"].map((r) => el("option", { value: r }, r)));
  const prompt = el("textarea", { name: "prompt", id: "prompt", rows: 2, maxlength: 1000, required: true,
    placeholder: "A ceramic fox, studio light" });
  const button = el("button", { type: "submit", id: "submit" }, "Generate");
  kind.addEventListener("change", () => { aspect.disabled = kind.value !== "image"; });
  const form = el("form", { class: "submit", id: "new-job" },
    el("label", { for: "prompt" }, "Prompt"), prompt,
    el("div", { class: "row" },
      el("label", {}, "Kind ", kind), el("label", {}, "Aspect ", aspect), button));
  // One Idempotency-Key per user action: a retry of the same request after a lost answer
  // (a network error, a busy Kiln) sends the key again, so Kiln returns the job it may
  // already have made instead of making a second; a changed request gets a new key.
  let attempt = null;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    const options = kind.value === "image" ? { aspectRatio: aspect.value } : {};
    const request = { kind: kind.value, prompt: prompt.value, options };
    const body = JSON.stringify(request);
    if (attempt?.body !== body) attempt = { body, key: crypto.randomUUID() };
    try {
      const { jobId } = await ctx.api.createJob(request, attempt.key);
      attempt = null;
      prompt.value = "";
      notice(`Job ${jobId} accepted.`, "info");
    } catch (error) {
      notice(error.message);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function showList() {
  const list = el("section", { id: "jobs", class: "jobs" }, el("p", { class: "empty" }, "Loading your jobs…"));
  root.append(submitForm(), el("h2", {}, "Your jobs"), list);
  const cards = new Map();
  stopWatching = watchJobs(ctx.db, ctx.session.uid, (jobs) => {
    if (!jobs.length) {
      list.replaceChildren(el("p", { class: "empty" }, "No jobs yet."));
      cards.clear();
      return;
    }
    const next = jobs.map((job) => {
      const key = cardKey(job);
      const known = cards.get(job.id);
      if (known && known.key === key) return known;
      return { key, node: jobCard(ctx.config, job, actions) };
    });
    cards.clear();
    jobs.forEach((job, i) => cards.set(job.id, next[i]));
    list.replaceChildren(...next.map((c) => c.node));
  }, (error) => notice(`Live updates stopped: ${error.message}`));
}

function showJob(jobId) {
  const slot = el("section", { id: "job", class: "detail" }, el("p", { class: "empty" }, "Loading…"));
  const timeline = timelinePanel(ctx.api, jobId);
  timeline.node.hidden = true;
  root.append(backLink(), slot, timeline.node);
  let key = null;
  let status = null;
  stopWatching = watchJob(ctx.db, jobId, (job) => {
    timeline.node.hidden = !job;
    if (job && job.status !== status) timeline.refresh(); // a new step is likely recorded
    status = job?.status ?? null;
    if (!job) {
      key = null;
      slot.replaceChildren(missing(jobId));
      return;
    }
    if (cardKey(job) === key) return;
    key = cardKey(job);
    slot.replaceChildren(jobCard(ctx.config, job, { ...actions, detail: true }));
  }, (error) => notice(`Live updates stopped: ${error.message}`));
}

function backLink() {
  return el("p", {}, el("a", { href: "/", "data-link": true }, "← All jobs"));
}

function missing(jobId) {
  return el("div", { class: "missing", role: "alert", "data-missing": jobId },
    el("h2", {}, "Job not found"),
    el("p", {}, "This job does not exist, or it is not yours."));
}

// --- start ----------------------------------------------------------------------------------

function signInForm(config) {
  const input = el("input", { id: "uid", name: "uid", required: true, pattern: "[A-Za-z0-9_:.-]{1,128}",
    placeholder: "alice" });
  const form = el("form", { class: "signin", id: "signin" },
    el("h2", {}, "Sign in (local emulator)"),
    el("p", {}, `Any user id works against the local stack (project ${config.firebase.projectId}).`),
    input, el("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    rememberLocalUid(input.value.trim());
    location.reload(); // Firestore's emulator identity is fixed when it connects
  });
  root.replaceChildren(form);
}

async function start() {
  const config = await loadConfig();
  const app = initializeApp({ apiKey: "local-demo-key", appId: "kiln-web", ...config.firebase });
  const db = getFirestore(app);
  let session;
  if (config.mode === "local") {
    const uid = localUid();
    if (!uid) return signInForm(config);
    const { host, port } = config.emulators.firestore;
    // mockUserToken: the emulator evaluates the security rules as this user.
    connectFirestoreEmulator(db, host, Number(port), { mockUserToken: { sub: uid, user_id: uid } });
    session = localSession(uid, config.firebase.projectId);
  } else {
    session = await firebaseSession(app);
  }
  ctx = { config, db, api: new KilnApi(config.apiUrl, session.idToken), session };
  document.getElementById("who").replaceChildren(`Signed in as ${session.uid} `,
    el("button", { type: "button", class: "link", id: "signout",
      onclick: async () => { await session.signOut(); location.assign("/"); } }, "Sign out"));
  route();
}

start().catch((error) => {
  root.replaceChildren(el("p", { class: "notice error", role: "alert" }, `Kiln could not start: ${error.message}`));
});
