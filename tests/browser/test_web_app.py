"""The reference web app (clients/web) in a real headless Chromium against the local stack.

What a user does: sign in (local mode: a uid), submit jobs through the HTTP API, watch them
live through Firestore (progress, stage), see the result, retry a failure, cancel, open the
push deep link ``/jobs/{jobId}``, and be refused someone else's job by the security rules.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from kiln_dev.stack import REPO, LocalStack
from kiln_dev.webapp import WebServer

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "test-artifacts"

# Records every status and progress each job card shows, so a test can tell that progress
# moved even when it moves fast (installed before the app's own scripts run).
RECORDER = """
window.__seen = {};
new MutationObserver(() => {
  for (const card of document.querySelectorAll('[data-job-id]')) {
    const seen = (window.__seen[card.dataset.jobId] ??= {progress: [], status: [], stage: []});
    const p = Number(card.dataset.progress);
    if (seen.progress.at(-1) !== p) seen.progress.push(p);
    if (seen.status.at(-1) !== card.dataset.status) seen.status.push(card.dataset.status);
    const stage = card.querySelector('.stage')?.textContent;
    if (stage && seen.stage.at(-1) !== stage) seen.stage.push(stage);
  }
}).observe(document, {subtree: true, childList: true, attributes: true});
"""


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, web: WebServer, uid: str, path: str = "/") -> None:
    page.add_init_script(RECORDER)
    page.goto(f"{web.url}{path}?uid={uid}")
    expect(page.locator("#who")).to_contain_text(f"Signed in as {uid}")


def submit(page: Any, kind: str, prompt: str) -> str:
    """Submit through the form; returns the new job's id once its card is listed."""
    before = set(page.locator("#jobs [data-job-id]").evaluate_all("els => els.map(e => e.dataset.jobId)"))
    page.select_option("#kind", kind)
    page.fill("#prompt", prompt)
    page.click("#submit")
    expect(page.locator("#notice")).to_contain_text("accepted")
    card = page.locator("#jobs [data-job-id]").first
    expect(card).to_be_visible()
    job_id = str(card.get_attribute("data-job-id"))
    assert job_id not in before
    return job_id


def seen(page: Any, job_id: str) -> dict[str, list[Any]]:
    return page.evaluate("id => window.__seen[id]", job_id)  # type: ignore[no-any-return]


def test_model_job_shows_live_progress_and_the_glb(page: Any, web: WebServer, uid: str) -> None:
    """Given a signed-in user, when they submit a 3D model job, then its card moves through
    pending/processing with rising progress and a stage, and ends completed with the GLB
    in <model-viewer> (loaded through the same-origin Storage path)."""
    sign_in(page, web, uid)
    job_id = submit(page, "model", "a red tower")
    card = page.locator(f'#jobs [data-job-id="{job_id}"]')
    page.wait_for_function("id => window.__seen[id]?.progress.some(p => p > 0 && p < 100)",
                           arg=job_id, timeout=60_000)
    shot(page, "web-model-processing")
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    viewer = card.locator("model-viewer")
    bucket = web.config["firebase"]["storageBucket"]
    expect(viewer).to_have_attribute("src", f"/_storage/download/storage/v1/b/{bucket}"
                                     f"/o/generations%2F{uid}%2F{job_id}%2Fresult.glb?alt=media")
    glb = page.request.get(web.url + str(viewer.get_attribute("src")))
    assert glb.ok and glb.body()[:4] == b"glTF"
    history = seen(page, job_id)
    assert history["status"][-1] == "completed" and "processing" in history["status"]
    between = [p for p in history["progress"] if 0 < p < 100]
    assert between, f"progress never showed an intermediate value: {history['progress']}"
    assert history["progress"] == sorted(history["progress"]), history["progress"]
    assert any(s.startswith("generating") for s in history["stage"]), history["stage"]
    shot(page, "web-model-completed")
    assert not page.console_errors, page.console_errors


def test_image_job_shows_the_png(page: Any, web: WebServer, uid: str) -> None:
    """Given a signed-in user, when they submit an image job, then the PNG appears in the list
    and actually decodes in the browser."""
    sign_in(page, web, uid)
    job_id = submit(page, "image", "a blue star")
    card = page.locator(f'#jobs [data-job-id="{job_id}"]')
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    image = card.locator("img.image")
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    shot(page, "web-image-completed")


def test_failed_job_shows_the_reason_and_retries(page: Any, web: WebServer, uid: str) -> None:
    """Given a job the provider refuses, when it fails, then the card shows the readable
    reason and a Retry button; when Retry is clicked, the job runs again (back to pending
    or processing) and fails again with the same reason."""
    sign_in(page, web, uid)
    job_id = submit(page, "image", "a fox [fail:permanent]")
    card = page.locator(f'#jobs [data-job-id="{job_id}"]')
    expect(card).to_have_attribute("data-status", "failed", timeout=60_000)
    expect(card.locator(".error")).to_contain_text("The provider refused this prompt.")
    shot(page, "web-failed")
    card.locator("button.retry").click()
    expect(page.locator("#notice")).to_contain_text("Retrying")
    page.wait_for_function("id => window.__seen[id].status.lastIndexOf('failed') > 0 && "
                           "window.__seen[id].status.at(-1) === 'failed'", arg=job_id, timeout=60_000)
    statuses = seen(page, job_id)["status"]
    first_failure = statuses.index("failed")
    assert {"pending", "processing"} & set(statuses[first_failure:]), statuses


def test_cancel_button_cancels_a_running_job(page: Any, web: WebServer, uid: str) -> None:
    """Given a model job that is still running, when the user clicks Cancel, then the card
    shows canceled and no result."""
    sign_in(page, web, uid)
    job_id = submit(page, "model", "a green sphere")
    card = page.locator(f'#jobs [data-job-id="{job_id}"]')
    card.locator("button.cancel").click()
    expect(card).to_have_attribute("data-status", "canceled", timeout=20_000)
    expect(card.locator(".result")).to_have_count(0)
    expect(card.locator("button.cancel")).to_have_count(0)


def test_deep_link_opens_the_job_and_its_timeline(page: Any, web: WebServer, api: httpx.Client,
                                                  uid: str) -> None:
    """Given a job made through the HTTP API (as a push would announce), when the app is
    opened at /jobs/{jobId} (the push's link), then it shows that job live until its result;
    when the user opens its Timeline panel, then the app fetches GET /v1/jobs/{jobId}/timeline
    with the user's token and draws one row per step, in the API's order with its
    milliseconds and a bar as wide as its gap on a shared scale."""
    job_id = api.post("/v1/jobs", json={"kind": "image", "prompt": "a yellow cube"}).json()["jobId"]
    sign_in(page, web, uid, f"/jobs/{job_id}")
    card = page.locator(f'#job [data-job-id="{job_id}"]')
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(card.locator("img.image")).to_be_visible()
    shot(page, "web-deep-link")
    panel = page.locator(f'#timeline[data-timeline-for="{job_id}"]')
    panel.locator("summary").click()
    rows = panel.locator(".wf-row[data-step]")
    expect(rows.first).to_have_attribute("data-step", "accepted")
    expect(panel.locator('[data-step="completed"]')).to_have_count(1)
    shown = rows.evaluate_all("els => els.map(e => [e.dataset.step, Number(e.dataset.sinceMs),"
                              " e.querySelector('.wf-bar').getBoundingClientRect().width,"
                              " e.querySelector('.wf-track').getBoundingClientRect().width])")
    steps = api.get(f"/v1/jobs/{job_id}/timeline").json()["steps"]
    # The API may have recorded a later step (notified) since the panel fetched.
    assert [(name, since) for name, since, _, _ in shown] == [
        (s["step"], s["sinceAcceptedMs"]) for s in steps[:len(shown)]]
    total = shown[-1][1]
    for (name, _, bar, track), step in zip(shown, steps, strict=False):
        assert bar == pytest.approx(max(2.0, step["gapMs"] / total * track), abs=1.5), name
    shot(page, "web-timeline")


def test_another_users_job_is_refused(page: Any, web: WebServer, stack: LocalStack, uid: str,
                                      token: Callable[[str], str]) -> None:
    """Given a job that belongs to someone else, when this user opens its deep link, then
    the rules deny the read and the app says "not found / not yours" (and does not list
    it); when its owner opens the same link, then it shows."""
    owner = f"{uid}-other"
    response = httpx.post(f"{stack.ingress_url}/v1/jobs", json={"kind": "image", "prompt": "a secret"},
                          headers={"Authorization": f"Bearer {token(owner)}"}, timeout=15)
    job_id = response.json()["jobId"]
    sign_in(page, web, uid, f"/jobs/{job_id}")
    missing = page.locator(f'[data-missing="{job_id}"]')
    expect(missing).to_contain_text("Job not found")
    expect(missing).to_contain_text("not yours")
    expect(page.locator("[data-job-id]")).to_have_count(0)
    expect(page.locator("#timeline")).to_be_hidden()  # no timeline to ask for
    shot(page, "web-not-yours")
    page.goto(f"{web.url}/?uid={uid}")
    expect(page.locator("#jobs")).to_contain_text("No jobs yet.")
    page.goto(f"{web.url}/jobs/{job_id}?uid={owner}")
    expect(page.locator(f'#job [data-job-id="{job_id}"]')).to_be_visible()


def test_cors_preflight_allows_the_browser(stack: LocalStack, web: WebServer) -> None:
    """Given the app's origin, when the browser preflights POST /v1/jobs, then the local
    ingress allows that origin, the Authorization and Idempotency-Key headers."""
    response = httpx.options(f"{stack.ingress_url}/v1/jobs", headers={
        "Origin": web.url, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key"})
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == web.url
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= {h.strip() for h in allowed.split(",")}


@pytest.mark.parametrize("segment", ["a%2Fb", "%E0%A4%A", "__abc__"])
def test_a_deep_link_naming_no_job_shows_not_found(page: Any, web: WebServer, uid: str,
                                                   segment: str) -> None:
    """Given a link /jobs/{x} whose x no job id can be (an escaped slash, a broken
    %-escape: each made the route throw; an id Firestore reserves: its listener failed with
    a raw message), when it is opened, then the app says "Job not
    found" instead of failing to start."""
    sign_in(page, web, uid, f"/jobs/{segment}")
    expect(page.locator("[data-missing]")).to_contain_text("Job not found")
    expect(page.get_by_role("link", name="← All jobs")).to_be_visible()
    assert not page.console_errors, page.console_errors


def test_a_submission_retried_after_a_lost_answer_makes_one_job(page: Any, web: WebServer,
                                                                uid: str) -> None:
    """Given a POST /v1/jobs that reaches Kiln but whose answer is lost (the network fails
    on the way back), when the user clicks Generate again, then the app sends the same
    Idempotency-Key and Kiln answers with the job it already made: one job, not two."""
    keys: list[str] = []
    made: list[str] = []

    def lose_first_answer(route: Any) -> None:
        if route.request.method != "POST":
            return route.continue_()
        keys.append(route.request.headers["idempotency-key"])
        if len(keys) == 1:
            made.append(route.fetch().json()["jobId"])  # Kiln makes the job; the page never hears
            return route.abort("connectionreset")
        return route.continue_()

    sign_in(page, web, uid)
    page.route("**/v1/jobs", lose_first_answer)
    page.select_option("#kind", "image")
    page.fill("#prompt", "a lost answer")
    page.click("#submit")
    expect(page.locator("#notice")).to_contain_text("cannot be reached")
    page.click("#submit")
    expect(page.locator("#notice")).to_contain_text(f"Job {made[0]} accepted")
    assert len(keys) == 2 and keys[0] == keys[1], keys
    expect(page.locator("#jobs [data-job-id]")).to_have_count(1)
