"""Static checks of infra/*.tf against the code: nothing here needs a cloud or Terraform.

The code is read at test time (``kiln.settings.ENV_VARS``, ``functions/*/main.py``), so a
new setting or a renamed entry point fails here until the Terraform follows.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tf_config import INFRA, REPO, TfModule, block, blocks, refs, strings

# --- what the code needs ---------------------------------------------------------------------

#: Read by the emulator-backed local stack only; never set in the cloud.
LOCAL_ONLY = frozenset({
    "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST",
    "FIREBASE_AUTH_EMULATOR_HOST", "KILN_FCM_ENDPOINT", "CLOUD_TASKS_EMULATOR_HOST",
    "KILN_WEBHOOK_SCHEDULE_SCALE",  # the delivery benchmark's; refused on the cloud
})

#: Read by the platform's functions-framework (THREADS), the OpenTelemetry SDK
#: (OTEL_SERVICE_NAME) and gRPC (GRPC_EXPERIMENTS), not by Kiln (each checked below).
PLATFORM_VARS = frozenset({"THREADS", "OTEL_SERVICE_NAME", "GRPC_EXPERIMENTS"})

#: Job lifecycle settings: written by one function and judged by another, so all agree.
LIFECYCLE = frozenset({
    "GOOGLE_CLOUD_PROJECT", "KILN_ENV", "KILN_JOBS_TOPIC", "KILN_LOG_LEVEL",
    "KILN_MAX_ATTEMPTS", "KILN_LEASE_SECONDS", "KILN_JOB_MAX_AGE_SECONDS",
    "KILN_PENDING_REPUBLISH_SECONDS", "KILN_RETRY_BACKOFF_SECONDS",
})

#: Tracing: every function makes spans of the jobs it touches (kiln.tracing).
TRACING = frozenset({"KILN_TRACING", "KILN_TRACE_SAMPLE"})

#: The fair queue: every function takes places or starts waiting jobs, and names a
#: provider's pool after the provider that makes each kind.
FAIR_QUEUE = frozenset({
    "KILN_PLANS", "KILN_DEFAULT_PLAN", "KILN_TELEGRAM_PLAN", "KILN_PLAN_GRANTS",
    "KILN_MAX_WAITING", "KILN_QUEUE_TTL_SECONDS", "KILN_QUEUE_AGEING_SECONDS",
    "KILN_PROVIDER_CAPACITY", "KILN_PROVIDER_BACKOFF_SECONDS", "KILN_IMAGE_PROVIDER",
    "KILN_MODEL_PROVIDER",
})

#: function (folder under functions/) -> variables its code path reads.
NEEDS: dict[str, frozenset[str]] = {
    "ingress": LIFECYCLE | FAIR_QUEUE | TRACING | {
        "KILN_MAX_BODY_BYTES", "KILN_CORS_ORIGINS", "KILN_TELEGRAM_WEBHOOK_SECRET", "KILN_TELEGRAM_BOT_TOKEN",
        "KILN_TELEGRAM_API_BASE", "KILN_TELEGRAM_DEFAULT_KIND",
        "KILN_TASKSERVER_WEBHOOK_SECRET", "KILN_MESHY_WEBHOOK_SECRET",
    },
    "worker": LIFECYCLE | FAIR_QUEUE | TRACING | {
        "KILN_BUCKET", "KILN_WORKER_BUDGET_SECONDS", "KILN_PROGRESS_INTERVAL_SECONDS",
        "KILN_LINK_TEMPLATE", "KILN_IMAGE_PROVIDER", "KILN_MODEL_PROVIDER",
        "KILN_MAX_ARTIFACT_BYTES", "KILN_ALLOWED_FETCH_HOSTS", "KILN_TELEGRAM_BOT_TOKEN",
        "KILN_TELEGRAM_API_BASE", "KILN_MESHY_API_KEY", "KILN_MESHY_BASE_URL",
        "KILN_MESHY_MODEL", "KILN_MESHY_TEXTURE_MODEL",
        "KILN_GEMINI_API_KEY", "KILN_GEMINI_MODEL", "KILN_TASKSERVER_URL",
        "KILN_TASKSERVER_API_KEY", "KILN_PUBLIC_URL", "KILN_TASKSERVER_WEBHOOK_SECRET",
        # Schedules a waiting job's next check (Cloud Tasks → the jobs topic).
        "KILN_TASKS_LOCATION", "KILN_TASKS_QUEUE", "KILN_TASKS_SERVICE_ACCOUNT",
        # The cadence of those checks (0: each provider's own).
        "KILN_POLL_FIRST_SECONDS", "KILN_POLL_MAX_SECONDS",
    },
    # Failing an expired job notifies its owner: FCM push and Telegram reply.
    "sweeper": LIFECYCLE | FAIR_QUEUE | TRACING | {
        "KILN_LINK_TEMPLATE", "KILN_TELEGRAM_BOT_TOKEN", "KILN_TELEGRAM_API_BASE",
        "KILN_SWEEPER_TIMEOUT_SECONDS",
    },
}

SECRET_IDS = frozenset({
    "kiln-telegram-bot-token", "kiln-telegram-webhook-secret", "kiln-meshy-api-key",
    "kiln-gemini-api-key", "kiln-taskserver-api-key", "kiln-taskserver-webhook-secret",
    "kiln-meshy-webhook-secret",
})

PRIMITIVE_ROLE = re.compile(r"roles/(owner|editor|viewer)\b")


def env_vars() -> dict[str, tuple[str, bool]]:
    from kiln.settings import ENV_VARS

    return dict(ENV_VARS)


def cloud_vars() -> dict[str, bool]:
    """Every variable the deployed code reads -> whether it is a secret."""
    return {k: secret for k, (_attr, secret) in env_vars().items() if k not in LOCAL_ONLY}


# --- the functions as Terraform declares them -----------------------------------------------


@dataclass
class Function:
    resource: str  # google_cloudfunctions2_function.<resource>
    name: str  # folder under functions/
    body: dict[str, Any]

    @property
    def service(self) -> dict[str, Any]:
        return block(self.body, "service_config")

    @property
    def build(self) -> dict[str, Any]:
        return block(self.body, "build_config")

    @property
    def env(self) -> dict[str, Any]:
        return dict(self.service.get("environment_variables") or {})

    @property
    def secret_env(self) -> dict[str, str]:
        """Environment variable -> google_secret_manager_secret resource name."""
        found = {}
        for sev in blocks(self.service, "secret_environment_variables"):
            names = refs(sev.get("secret"), "google_secret_manager_secret")
            found[sev["key"]] = names[0] if names else str(sev.get("secret"))
        return found

    @property
    def all_env(self) -> set[str]:
        return set(self.env) | set(self.secret_env)

    @property
    def service_account(self) -> str:
        names = refs(self.service.get("service_account_email"), "google_service_account")
        return names[0] if names else ""

    @property
    def member(self) -> str:
        return f"google_service_account.{self.service_account}."


@pytest.fixture(scope="module")
def functions(tf: TfModule) -> dict[str, Function]:
    """Function folder name -> its google_cloudfunctions2_function."""
    modules = tf.named("module")
    found = {}
    for resource, body in tf.resources("google_cloudfunctions2_function").items():
        source = block(block(block(body, "build_config"), "source"), "storage_source")
        module_names = refs(source.get("object"), "module")
        assert module_names, f"function {resource}: source object is not a function_source module"
        name = modules[module_names[0]]["name"]
        found[name] = Function(resource=resource, name=name, body=body)
    assert found, "no google_cloudfunctions2_function in infra/"
    return found


def members_of(tf: TfModule, rtype: str, fn: Function) -> dict[str, dict[str, Any]]:
    """IAM member resources of type ``rtype`` granted to ``fn``'s service account."""
    return {
        name: body for name, body in tf.resources(rtype).items()
        if fn.service_account and fn.service_account in refs(body["member"], "google_service_account")
    }


def push_subscriptions(tf: TfModule) -> dict[str, dict[str, Any]]:
    return {n: b for n, b in tf.resources("google_pubsub_subscription").items()
            if blocks(b, "push_config")}


def pushed_functions(tf: TfModule) -> set[str]:
    """Resources of the functions that a push subscription delivers to."""
    return {r for sub in push_subscriptions(tf).values()
            for r in refs(block(sub, "push_config").get("push_endpoint"),
                          "google_cloudfunctions2_function")}


def variable_default(tf: TfModule, value: Any) -> Any:
    names = refs(value, "var")
    assert len(names) == 1, f"expected one variable in {value!r}"
    return tf.named("variable")[names[0]].get("default")


# --- topics and the worker's delivery ---------------------------------------------------------


def test_jobs_topic_the_code_uses_exists(tf: TfModule, functions: dict[str, Function]) -> None:
    """Given Settings' default jobs topic, when reading the topics, then it exists and every
    function's KILN_JOBS_TOPIC points at it."""
    from kiln.settings import Settings

    topics = tf.resources("google_pubsub_topic")
    wanted = Settings().jobs_topic
    by_name = {body["name"]: name for name, body in topics.items()}
    assert wanted in by_name, f"no google_pubsub_topic named {wanted!r}"
    for fn in functions.values():
        assert refs(fn.env.get("KILN_JOBS_TOPIC"), "google_pubsub_topic") == [by_name[wanted]], (
            f"{fn.name}: KILN_JOBS_TOPIC must be google_pubsub_topic.{by_name[wanted]}.name")


def test_worker_push_subscription_owns_retry_and_dead_letter(
        tf: TfModule, functions: dict[str, Function]) -> None:
    """Given the worker's push subscription, when reading it, then it pushes with an OIDC
    token, waits 600 s, retries with 10-600 s backoff and dead-letters after 10 attempts."""
    subs = push_subscriptions(tf)
    assert len(subs) == 1, f"expected one push subscription, found {sorted(subs)}"
    sub = next(iter(subs.values()))
    topics = tf.resources("google_pubsub_topic")
    assert topics[refs(sub["topic"], "google_pubsub_topic")[0]]["name"] == "kiln-jobs"
    push = block(sub, "push_config")
    assert refs(push["push_endpoint"], "google_cloudfunctions2_function") == [
        functions["worker"].resource]
    oidc = block(push, "oidc_token")
    assert refs(oidc.get("service_account_email"), "google_service_account"), "no OIDC identity"
    assert sub["ack_deadline_seconds"] == 600
    retry = block(sub, "retry_policy")
    assert (retry.get("minimum_backoff"), retry.get("maximum_backoff")) == ("10s", "600s")
    dead = block(sub, "dead_letter_policy")
    assert dead.get("max_delivery_attempts") == 10
    dlq = refs(dead.get("dead_letter_topic"), "google_pubsub_topic")
    assert dlq and topics[dlq[0]]["name"] == "kiln-jobs-dead"


def test_pubsub_service_agent_can_dead_letter(tf: TfModule) -> None:
    """Given the dead-letter policy, when reading IAM, then the Pub/Sub service agent may
    publish to the DLQ topic and subscribe on the source subscription (or DLQ silently fails)."""
    agents = {n for n, b in tf.resources("google_project_service_identity").items()
              if b.get("service") == "pubsub.googleapis.com"}
    assert agents, "no google_project_service_identity for pubsub.googleapis.com"

    def by_agent(body: dict[str, Any]) -> bool:
        return bool(set(refs(body["member"], "google_project_service_identity")) & agents)

    (sub_name, sub), = push_subscriptions(tf).items()
    dlq = refs(block(sub, "dead_letter_policy")["dead_letter_topic"], "google_pubsub_topic")[0]
    publishers = [b for b in tf.resources("google_pubsub_topic_iam_member").values()
                  if by_agent(b) and b["role"] == "roles/pubsub.publisher"
                  and refs(b["topic"], "google_pubsub_topic") == [dlq]]
    assert publishers, f"service agent lacks roles/pubsub.publisher on topic {dlq}"
    subscribers = [b for b in tf.resources("google_pubsub_subscription_iam_member").values()
                   if by_agent(b) and b["role"] == "roles/pubsub.subscriber"
                   and refs(b["subscription"], "google_pubsub_subscription") == [sub_name]]
    assert subscribers, f"service agent lacks roles/pubsub.subscriber on {sub_name}"


def test_dead_letters_can_be_inspected(tf: TfModule) -> None:
    """Given the DLQ topic, when reading subscriptions, then kiln-jobs-dead-sub pulls from it."""
    topics = tf.resources("google_pubsub_topic")
    pulls = {b["name"]: topics[refs(b["topic"], "google_pubsub_topic")[0]]["name"]
             for b in tf.resources("google_pubsub_subscription").values()
             if not blocks(b, "push_config")}
    assert pulls.get("kiln-jobs-dead-sub") == "kiln-jobs-dead"


def test_only_the_pusher_may_invoke_the_worker(tf: TfModule, functions: dict[str, Function]) -> None:
    """Given the worker, when reading its invokers, then only the push subscription's OIDC
    identity may call it, and its ingress is internal-only."""
    worker = functions["worker"]
    invokers = [b["member"] for b in tf.resources("google_cloud_run_v2_service_iam_member").values()
                if refs(b["name"], "google_cloudfunctions2_function") == [worker.resource]]
    (sub,) = push_subscriptions(tf).values()
    pusher = refs(block(block(sub, "push_config"), "oidc_token")["service_account_email"],
                  "google_service_account")
    assert [refs(m, "google_service_account") for m in invokers] == [pusher]
    assert worker.service["ingress_settings"] == "ALLOW_INTERNAL_ONLY"


def test_checks_queue_the_worker_schedules_on(tf: TfModule, functions: dict[str, Function]) -> None:
    """Given Settings' default checks queue, when reading Cloud Tasks, then the queue exists
    with bounded retries and rate, the worker's KILN_TASKS_* name it and its token account,
    the worker may enqueue there and act as that account, and that account may publish to
    the jobs topic and nothing else."""
    from kiln.settings import Settings

    assert '"cloudtasks.googleapis.com"' in tf.resources("google_project_service")["apis"]["for_each"]
    queues = tf.resources("google_cloud_tasks_queue")
    by_name = {body["name"]: name for name, body in queues.items()}
    assert Settings().tasks_queue in by_name, f"no google_cloud_tasks_queue {Settings().tasks_queue!r}"
    queue = by_name[Settings().tasks_queue]
    retry = block(queues[queue], "retry_config")
    assert retry["max_attempts"] > 0 and retry.get("max_retry_duration")
    rate = variable_default(tf, block(queues[queue], "rate_limits")["max_dispatches_per_second"])
    assert 0 < rate <= 500
    worker = functions["worker"]
    assert refs(worker.env.get("KILN_TASKS_QUEUE"), "google_cloud_tasks_queue") == [queue]
    assert refs(worker.env.get("KILN_TASKS_LOCATION"), "google_cloud_tasks_queue") == [queue]
    (account,) = refs(worker.env.get("KILN_TASKS_SERVICE_ACCOUNT"), "google_service_account")
    assert account not in {fn.service_account for fn in functions.values()}
    enqueuers = [b for b in members_of(tf, "google_cloud_tasks_queue_iam_member", worker).values()
                 if b["role"] == "roles/cloudtasks.enqueuer"]
    assert [refs(b["name"], "google_cloud_tasks_queue") for b in enqueuers] == [[queue]]
    acts_as = [b for b in members_of(tf, "google_service_account_iam_member", worker).values()
               if b["role"] == "roles/iam.serviceAccountUser"]
    assert [refs(b["service_account_id"], "google_service_account") for b in acts_as] == [[account]]
    topics = tf.resources("google_pubsub_topic")
    grants = [(b["role"], topics[refs(b["topic"], "google_pubsub_topic")[0]]["name"])
              for b in tf.resources("google_pubsub_topic_iam_member").values()
              if account in refs(b["member"], "google_service_account")]
    assert grants == [("roles/pubsub.publisher", "kiln-jobs")]
    project = [b for b in tf.resources("google_project_iam_member").values()
               if account in refs(b["member"], "google_service_account")]
    assert not project, "the tasks account needs no project role"


# --- functions ---------------------------------------------------------------------------------


def test_functions_are_the_three_with_python312(functions: dict[str, Function]) -> None:
    """Given the Terraform, when listing functions, then ingress, worker and sweeper run
    python312."""
    assert sorted(functions) == ["ingress", "sweeper", "worker"]
    for fn in functions.values():
        assert fn.build["runtime"] == "python312", fn.name


def test_worker_timeout_is_the_event_limit(tf: TfModule, functions: dict[str, Function]) -> None:
    """Given the worker, when reading limits, then it times out at 540 s, hands on before
    that, and the push ack deadline outlasts it."""
    worker = functions["worker"]
    assert worker.service["timeout_seconds"] == 540
    assert worker.service["available_memory"] == "1Gi"
    budget = variable_default(tf, worker.env["KILN_WORKER_BUDGET_SECONDS"])
    assert 0 < budget < 540
    (sub,) = push_subscriptions(tf).values()
    assert sub["ack_deadline_seconds"] >= worker.service["timeout_seconds"]


def test_threads_match_concurrency(functions: dict[str, Function]) -> None:
    """Given each function, when reading its scaling, then THREADS equals the instance
    concurrency (and concurrency above 1 has a whole vCPU)."""
    for fn in functions.values():
        concurrency = fn.service["max_instance_request_concurrency"]
        assert str(fn.env.get("THREADS")) == str(concurrency), fn.name
        if str(concurrency) != "1":
            assert float(fn.service["available_cpu"]) >= 1, fn.name


def test_functions_framework_reads_threads() -> None:
    """Given functions-framework, when reading its server setup, then THREADS is what sizes
    the thread pool (so setting it is not an unread variable)."""
    from functions_framework._http import gunicorn

    assert '"THREADS"' in inspect.getsource(gunicorn)


def test_the_ingress_keeps_grpcs_older_client_path(functions: dict[str, Function]) -> None:
    """Given the ingress, when reading its environment, then GRPC_EXPERIMENTS is the value
    measured for it (kiln.settings, which the local stack sets too), and only there."""
    from kiln.settings import INGRESS_GRPC_EXPERIMENTS

    assert functions["ingress"].env.get("GRPC_EXPERIMENTS") == INGRESS_GRPC_EXPERIMENTS
    assert [fn.name for fn in functions.values() if "GRPC_EXPERIMENTS" in fn.env] == ["ingress"]


def test_the_installed_grpc_knows_the_ingress_experiment() -> None:
    """Given the pinned grpcio, when it starts with the ingress's GRPC_EXPERIMENTS, then it
    names no unknown experiment. gRPC ignores one it no longer knows (logging it), and the
    ingress's measured CPU saving would silently go: an upgrade that removes it fails here."""
    from kiln.settings import INGRESS_GRPC_EXPERIMENTS

    probe = ("import grpc; grpc.insecure_channel('127.0.0.1:9').close(); "
             "print('started', flush=True)")
    for value in (INGRESS_GRPC_EXPERIMENTS, "-no_such_experiment"):
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env={**os.environ, "GRPC_EXPERIMENTS": value}, timeout=60)
        assert run.stdout.strip() == "started", run.stderr
        unknown = "Unknown experiment" in run.stderr
        assert unknown == value.startswith("-no_such"), (value, run.stderr)


def test_the_opentelemetry_sdk_reads_the_service_name(
        monkeypatch: pytest.MonkeyPatch, functions: dict[str, Function]) -> None:
    """Given OTEL_SERVICE_NAME as Terraform sets it, when the SDK builds the resource Kiln's
    tracer uses, then the spans' service is that name (so setting it is not unread)."""
    from opentelemetry.sdk.resources import Resource

    monkeypatch.setenv("OTEL_SERVICE_NAME", "kiln-worker")
    assert Resource.create({}).attributes["service.name"] == "kiln-worker"
    for fn in functions.values():
        assert fn.env.get("OTEL_SERVICE_NAME") == f"kiln-{fn.name}", fn.name


def _entry_points(main: Path) -> dict[str, str]:
    """Top-level functions of ``main`` decorated by functions-framework -> decorator name."""
    found = {}
    for node in ast.parse(main.read_text(), filename=str(main)).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name in ("http", "cloud_event"):
                found[node.name] = name
    return found


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_entry_point_exists(name: str, tf: TfModule, functions: dict[str, Function]) -> None:
    """Given a function's entry_point in Terraform, when parsing functions/<name>/main.py,
    then it defines that function with the matching functions-framework decorator."""
    fn = functions[name]
    entry = fn.build["entry_point"]
    main = REPO / "functions" / name / "main.py"
    assert main.is_file(), f"functions/{name}/main.py is missing (Terraform entry point {entry!r})"
    kind = "cloud_event" if fn.resource in pushed_functions(tf) else "http"
    found = _entry_points(main)
    assert entry in found, (
        f"functions/{name}/main.py defines no @functions_framework.{kind} function {entry!r} "
        f"(found {found or 'none'})")
    assert found[entry] == kind, f"{entry!r} is {found[entry]}, Terraform delivers {kind}"


# --- environment and secrets -------------------------------------------------------------------


def test_every_variable_the_code_reads_is_set(functions: dict[str, Function]) -> None:
    """Given ENV_VARS, when collecting every function's environment, then each cloud
    variable is set on some function."""
    deployed = set().union(*(fn.all_env for fn in functions.values()))
    missing = sorted(set(cloud_vars()) - deployed)
    assert not missing, f"ENV_VARS read by the code but set on no function: {missing}"


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_function_gets_what_its_code_needs(name: str, functions: dict[str, Function]) -> None:
    """Given one function, when reading its environment, then every variable its code path
    needs is set, and its secrets are exactly the ones it needs."""
    fn = functions[name]
    known = cloud_vars()
    needs = {v for v in NEEDS[name] if v in known}
    assert not sorted(needs - fn.all_env), f"{name} misses {sorted(needs - fn.all_env)}"
    secrets = {v for v in needs if known[v]}
    assert set(fn.secret_env) == secrets, f"{name} mounts {sorted(fn.secret_env)}"


def test_no_function_sets_what_the_code_does_not_read(functions: dict[str, Function]) -> None:
    """Given every function, when reading its environment, then it sets only variables in
    ENV_VARS (or the platform's THREADS), never emulator hosts or KILN_FCM_ENDPOINT."""
    known = cloud_vars()
    for fn in functions.values():
        forbidden = sorted(fn.all_env & LOCAL_ONLY)
        assert not forbidden, f"{fn.name} sets local-only {forbidden}"
        unknown = sorted(fn.all_env - set(known) - PLATFORM_VARS)
        assert not unknown, f"{fn.name} sets variables the code does not read: {unknown}"
        assert fn.env.get("KILN_ENV") == "cloud", fn.name


def test_secrets_come_only_from_secret_manager(
        tf: TfModule, functions: dict[str, Function]) -> None:
    """Given ENV_VARS' secret flags, when reading each function, then secrets are mounted
    from existing Secret Manager secrets (latest version) and never set as plain values."""
    known = cloud_vars()
    secrets = tf.resources("google_secret_manager_secret")
    for fn in functions.values():
        plain_secrets = sorted(v for v in fn.env if known.get(v))
        assert not plain_secrets, f"{fn.name} sets secrets as plain values: {plain_secrets}"
        for var, secret in fn.secret_env.items():
            assert known.get(var), f"{fn.name} mounts non-secret {var} from Secret Manager"
            assert secret in secrets, f"{fn.name}: {var} uses undeclared secret {secret!r}"
        for sev in blocks(fn.service, "secret_environment_variables"):
            assert sev.get("version") == "latest", (fn.name, sev["key"])


def test_secret_values_never_enter_terraform(tf: TfModule) -> None:
    """Given the secrets, when reading the Terraform, then the seven secrets exist and no
    secret version (a value) is managed by Terraform."""
    ids = {b["secret_id"] for b in tf.resources("google_secret_manager_secret").values()}
    assert ids == SECRET_IDS
    assert not tf.resources("google_secret_manager_secret_version")
    assert not tf.data("google_secret_manager_secret_version")


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_function_reads_only_its_own_secrets(
        name: str, tf: TfModule, functions: dict[str, Function]) -> None:
    """Given one function, when reading Secret Manager IAM, then its account may access
    exactly the secrets it mounts, secret by secret."""
    fn = functions[name]
    granted = set()
    for body in members_of(tf, "google_secret_manager_secret_iam_member", fn).values():
        assert body["role"] == "roles/secretmanager.secretAccessor"
        granted.update(refs(body["secret_id"], "google_secret_manager_secret"))
    assert granted == set(fn.secret_env.values())
    project_roles = {b["role"] for b in members_of(tf, "google_project_iam_member", fn).values()}
    assert not any(r.startswith("roles/secretmanager") for r in project_roles)


# --- identities and roles ------------------------------------------------------------------


def test_each_function_has_its_own_service_account(
        tf: TfModule, functions: dict[str, Function]) -> None:
    """Given the functions, when reading their identities, then each runs as a distinct
    service account declared here."""
    accounts = [fn.service_account for fn in functions.values()]
    assert all(accounts), "a function runs as the default service account"
    assert len(set(accounts)) == len(accounts), f"shared service accounts: {accounts}"
    assert set(accounts) <= set(tf.resources("google_service_account"))


EXPECTED_PROJECT_ROLES = {
    # fcm_sender: a cancel that ends an app batch's last open job sends the batch's push
    "ingress": {"roles/datastore.user", "roles/cloudtrace.agent", "roles/firebaseauth.viewer",
                "fcm_sender"},
    "worker": {"roles/datastore.user", "fcm_sender", "roles/cloudtrace.agent"},
    "sweeper": {"roles/datastore.user", "fcm_sender", "roles/cloudtrace.agent"},
}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_function_roles_are_narrow(name: str, tf: TfModule, functions: dict[str, Function]) -> None:
    """Given one function's account, when reading project and resource grants, then it has
    the expected project roles, publishes to the jobs topic only, only the worker writes
    to the results bucket, and the sweeper reads it (a Telegram result sent again)."""
    fn = functions[name]
    project = {
        (refs(b["role"], "google_project_iam_custom_role") or [b["role"]])[0]
        for b in members_of(tf, "google_project_iam_member", fn).values()
    }
    assert project == EXPECTED_PROJECT_ROLES[name]
    topics = tf.resources("google_pubsub_topic")
    published = {topics[refs(b["topic"], "google_pubsub_topic")[0]]["name"]
                 for b in members_of(tf, "google_pubsub_topic_iam_member", fn).values()
                 if b["role"] == "roles/pubsub.publisher"}
    assert published == {"kiln-jobs"}
    buckets = {b["role"] for b in members_of(tf, "google_storage_bucket_iam_member", fn).values()}
    assert buckets == {"worker": {"roles/storage.objectUser"},
                       "sweeper": {"roles/storage.objectViewer"}}.get(name, set())


def test_fcm_role_only_sends(tf: TfModule) -> None:
    """Given the custom FCM role, when reading its permissions, then it can only send."""
    roles = tf.resources("google_project_iam_custom_role")
    assert roles["fcm_sender"]["permissions"] == ["cloudmessaging.messages.create"]


def test_no_primitive_roles(tf_modules: list[TfModule]) -> None:
    """Given every module, when scanning all values, then no roles/owner, editor or viewer."""
    for module in tf_modules:
        hits = [s for s in strings(module.top) if PRIMITIVE_ROLE.search(s)]
        assert not hits, f"{module.path}: primitive roles {hits}"


def test_every_grant_says_why(tf_modules: list[TfModule]) -> None:
    """Given the IAM grants, when reading the source text, then each is preceded by a
    comment saying why it is needed."""
    grant = re.compile(r'^resource\s+"(google_\w+_iam_(?:member|binding))"\s+"(\w+)"', re.M)
    for module in tf_modules:
        for filename, text in module.texts.items():
            lines = text.splitlines()
            for match in grant.finditer(text):
                index = text[:match.start()].count("\n")
                above = lines[index - 1].strip() if index else ""
                assert above.startswith("#"), f"{filename}: {match.group(2)} has no comment"


def test_public_only_where_it_authenticates_itself(
        tf: TfModule, functions: dict[str, Function]) -> None:
    """Given the invoker grants, when looking for allUsers, then only the ingress is public."""
    public = {refs(b["name"], "google_cloudfunctions2_function")[0]
              for rtype in ("google_cloud_run_v2_service_iam_member",
                            "google_cloud_run_service_iam_member",
                            "google_cloudfunctions2_function_iam_member")
              for b in tf.resources(rtype).values()
              if b.get("member") in ("allUsers", "allAuthenticatedUsers")}
    assert public == {functions["ingress"].resource}


def test_scheduler_calls_sweeper_as_itself(tf: TfModule, functions: dict[str, Function]) -> None:
    """Given the scheduler job, when reading it, then it POSTs to the sweeper every minute
    with an OIDC token of the sweeper's own account, which may invoke it."""
    sweeper = functions["sweeper"]
    (job,) = tf.resources("google_cloud_scheduler_job").values()
    assert job["schedule"] == "* * * * *"
    target = block(job, "http_target")
    assert refs(target["uri"], "google_cloudfunctions2_function") == [sweeper.resource]
    oidc = block(target, "oidc_token")
    assert refs(oidc["service_account_email"], "google_service_account") == [
        sweeper.service_account]
    invokers = [refs(b["member"], "google_service_account")
                for b in tf.resources("google_cloud_run_v2_service_iam_member").values()
                if refs(b["name"], "google_cloudfunctions2_function") == [sweeper.resource]]
    assert invokers == [[sweeper.service_account]]


# --- data --------------------------------------------------------------------------------------

INDEXES = {
    ("uid", "ASCENDING", "createdAt", "DESCENDING"),
    ("status", "ASCENDING", "updatedAt", "ASCENDING"),
    ("uid", "ASCENDING", "status", "ASCENDING"),
    ("uid", "ASCENDING", "createdAt", "ASCENDING"),
    ("batchId", "ASCENDING", "status", "ASCENDING"),
}


def test_firestore_indexes_and_ttl(tf: TfModule) -> None:
    """Given the Firestore resources, when reading them, then the native database, the four
    jobs indexes, the webhook deliveries' sweep index and a TTL policy on jobs.expireAt
    exist."""
    (db,) = tf.resources("google_firestore_database").values()
    assert (db["name"], db["type"]) == ("(default)", "FIRESTORE_NATIVE")
    found = set()
    for index in tf.resources("google_firestore_index").values():
        fields = tuple(x for f in blocks(index, "fields") for x in (f["field_path"], f["order"]))
        if index["collection"] == "webhookDeliveries":
            assert fields in {("state", "ASCENDING", "nextAt", "ASCENDING"),
                              ("endpointId", "ASCENDING", "createdAt", "DESCENDING"),
                              ("eventId", "ASCENDING", "createdAt", "DESCENDING")}, fields
            continue
        assert index["collection"] == "jobs"
        found.add(fields)
    assert found >= INDEXES, f"missing indexes {INDEXES - found}"
    ttl = [f for f in tf.resources("google_firestore_field").values()
           if (f["collection"], f["field"]) == ("jobs", "expireAt") and blocks(f, "ttl_config")]
    assert ttl, "no TTL policy on jobs.expireAt"
    tickets = [f for f in tf.resources("google_firestore_field").values()
               if (f["collection"], f["field"]) == ("quotaTickets", "expireAt")
               and blocks(f, "ttl_config")]
    assert tickets, "no TTL policy on quotaTickets.expireAt (a ticket per admitted job)"
    # a TTL deletion of a job or batch leaves its subcollections: server state would stay
    private = [f for f in tf.resources("google_firestore_field").values()
               if (f["collection"], f["field"]) == ("private", "expireAt")
               and blocks(f, "ttl_config")]
    assert private, "no TTL policy on the private collection group's expireAt"
    ttl_collections = {f["collection"] for f in tf.resources("google_firestore_field").values()
                       if f["field"] == "expireAt" and blocks(f, "ttl_config")}
    assert {"webhookEvents", "webhookDeliveries", "webhookAttempts",
            "telegramChats"} <= ttl_collections
    # a push looks for each device's address under every user (FirestoreDeviceStore)
    grouped = {f["field"] for f in tf.resources("google_firestore_field").values()
               if f["collection"] == "devices"
               for config in blocks(f, "index_config") for index in blocks(config, "indexes")
               if index.get("query_scope") == "COLLECTION_GROUP"}
    assert grouped == {"fid", "token"}
    # a timeline's steps are never queried: not indexed (a document's index entries are few)
    unindexed = {f["field"] for f in tf.resources("google_firestore_field").values()
                 if f["collection"] == "private" and not blocks(f, "ttl_config")
                 and not any(blocks(c, "indexes") for c in blocks(f, "index_config"))}
    assert {"timeline", "earlierRun"} <= unindexed


def test_the_database_can_be_recovered(tf: TfModule) -> None:
    """Given the database, then it is delete-protected, keeps 7 days of point-in-time
    versions and has a daily backup kept 14 days: data a bad release wrote can be read back."""
    (db,) = tf.resources("google_firestore_database").values()
    assert db["delete_protection_state"] == "DELETE_PROTECTION_ENABLED"
    assert db["point_in_time_recovery_enablement"] == "POINT_IN_TIME_RECOVERY_ENABLED"
    (schedule,) = tf.resources("google_firestore_backup_schedule").values()
    assert schedule["retention"] == "1209600s" and blocks(schedule, "daily_recurrence")


def test_results_bucket(tf: TfModule, functions: dict[str, Function]) -> None:
    """Given the results bucket, when reading it, then access is uniform, web clients may GET
    it, old results expire, and it is the functions' KILN_BUCKET."""
    buckets = tf.resources("google_storage_bucket")
    results = [n for n, b in buckets.items() if blocks(b, "cors")]
    assert len(results) == 1
    bucket = buckets[results[0]]
    assert bucket["uniform_bucket_level_access"] is True
    assert "GET" in block(bucket, "cors")["method"]
    deletes = [r for r in blocks(bucket, "lifecycle_rule")
               if block(r, "action")["type"] == "Delete"]
    assert deletes and "age" in block(deletes[0], "condition")
    for fn in functions.values():
        if "KILN_BUCKET" in fn.env:
            assert refs(fn.env["KILN_BUCKET"], "google_storage_bucket") == results


def test_rules_files_exist(tf_modules: list[TfModule]) -> None:
    """Given every file() the Terraform reads, when resolving it from its module, then the
    file exists (firestore.rules and storage.rules among them)."""
    read = []
    for module in tf_modules:
        for text in module.texts.values():
            for rel in re.findall(r'file\("\$\{path\.module\}/([^"]+)"\)', text):
                read.append(rel)
                path = module.path / rel
                assert path.is_file(), f"{path.relative_to(REPO)} is read by Terraform but missing"
    assert {"firestore.rules", "storage.rules"} <= set(read)
    rulesets = load_rulesets(tf_modules[0])
    assert set(rulesets) == {"firestore.rules", "storage.rules"}


def load_rulesets(tf: TfModule) -> dict[str, str]:
    """Ruleset file name -> the release that publishes it."""
    releases = {refs(b["ruleset_name"], "google_firebaserules_ruleset")[0]: b["name"]
                for b in tf.resources("google_firebaserules_release").values()}
    return {block(block(body, "source"), "files")["name"]: releases[name]
            for name, body in tf.resources("google_firebaserules_ruleset").items()}


def test_rules_are_released(tf: TfModule) -> None:
    """Given the rulesets, when reading the releases, then Firestore's goes to cloud.firestore
    and Storage's to the results bucket."""
    rulesets = load_rulesets(tf)
    assert rulesets["firestore.rules"] == "cloud.firestore"
    assert rulesets["storage.rules"].startswith("firebase.storage/")


def test_outputs(tf: TfModule, functions: dict[str, Function]) -> None:
    """Given the outputs, when reading them, then the webhook URL is the ingress URL plus
    /telegram/webhook, and the API URL and bucket name are there."""
    outputs = tf.named("output")
    ingress = functions["ingress"].resource
    assert str(outputs["webhook_url"]["value"]).endswith("/telegram/webhook")
    assert refs(outputs["webhook_url"]["value"], "google_cloudfunctions2_function") == [ingress]
    assert refs(outputs["api_url"]["value"], "google_cloudfunctions2_function") == [ingress]
    assert refs(outputs["bucket_name"]["value"], "google_storage_bucket")


def test_function_sources_are_content_addressed(tf_modules: list[TfModule]) -> None:
    """Given the function_source module, when reading it, then the uploaded object's name
    carries the archive hash (a source change redeploys) and the zip's modes are pinned."""
    module = next(m for m in tf_modules if m.path.name == "function_source")
    (archive,) = module.data("archive_file").values()
    assert archive["output_file_mode"] == "0644"
    (obj,) = module.resources("google_storage_bucket_object").values()
    assert "data.archive_file.source.output_md5" in obj["name"]
    assert (INFRA / "modules" / "function_source").is_dir()
