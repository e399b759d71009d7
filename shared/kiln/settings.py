"""Settings, read from the environment once into one frozen object.

Every environment variable Kiln reads is named in ``ENV_VARS`` (the infra checks compare
it with the Terraform); secrets are marked and never appear in ``repr`` or logs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kiln.core.errors import ConfigError
from kiln.core.job import PROMPT_MAX, PROVIDER_PROMPT_MAX
from kiln.core.plans import DEFAULT_PLANS, Plan, check_plan_name, parse_capacity, parse_plans
from kiln.core.policy import PollCadence, RetryPolicy
from kiln.tracing import check_mode as check_tracing_mode

#: Environment variable → (settings attribute, is_secret). The single list of what Kiln reads.
ENV_VARS: dict[str, tuple[str, bool]] = {
    "GOOGLE_CLOUD_PROJECT": ("project", False),
    "KILN_ENV": ("env", False),
    "KILN_BUCKET": ("bucket", False),
    "KILN_JOBS_TOPIC": ("jobs_topic", False),
    "KILN_MAX_ATTEMPTS": ("max_attempts", False),
    "KILN_LEASE_SECONDS": ("lease_seconds", False),
    "KILN_WORKER_BUDGET_SECONDS": ("worker_budget_seconds", False),
    "KILN_SWEEPER_TIMEOUT_SECONDS": ("sweeper_timeout_seconds", False),
    "KILN_JOB_MAX_AGE_SECONDS": ("job_max_age_seconds", False),
    "KILN_PENDING_REPUBLISH_SECONDS": ("pending_republish_seconds", False),
    "KILN_PROGRESS_INTERVAL_SECONDS": ("progress_interval_seconds", False),
    "KILN_RETRY_BACKOFF_SECONDS": ("retry_backoff_seconds", False),
    "KILN_LINK_TEMPLATE": ("link_template", False),
    "KILN_MAX_BODY_BYTES": ("max_body_bytes", False),
    "KILN_CORS_ORIGINS": ("cors_origins", False),
    "KILN_IMAGE_PROVIDER": ("image_provider", False),
    "KILN_MODEL_PROVIDER": ("model_provider", False),
    "KILN_OFFLINE_IMAGE_SECONDS": ("offline_image_seconds", False),
    "KILN_OFFLINE_MODEL_SECONDS": ("offline_model_seconds", False),
    "KILN_FCM_ENDPOINT": ("fcm_endpoint", False),
    "KILN_TELEGRAM_BOT_TOKEN": ("telegram_bot_token", True),
    "KILN_TELEGRAM_WEBHOOK_SECRET": ("telegram_webhook_secret", True),
    "KILN_TELEGRAM_API_BASE": ("telegram_api_base", False),
    "KILN_TELEGRAM_DEFAULT_KIND": ("telegram_default_kind", False),
    "KILN_MESHY_API_KEY": ("meshy_api_key", True),
    "KILN_MESHY_BASE_URL": ("meshy_base_url", False),
    "KILN_MESHY_MODEL": ("meshy_model", False),
    "KILN_MESHY_TEXTURE_MODEL": ("meshy_texture_model", False),
    "KILN_GEMINI_API_KEY": ("gemini_api_key", True),
    "KILN_GEMINI_MODEL": ("gemini_model", False),
    "KILN_TASKSERVER_URL": ("taskserver_url", False),
    "KILN_TASKSERVER_API_KEY": ("taskserver_api_key", True),
    "KILN_ALLOWED_FETCH_HOSTS": ("allowed_fetch_hosts", False),
    "KILN_MAX_ARTIFACT_BYTES": ("max_artifact_bytes", False),
    "KILN_LOG_LEVEL": ("log_level", False),
    # Opt-in OpenTelemetry spans (kiln.tracing): off | cloud | console | file:PATH, and
    # the ratio of traces kept, by trace id (unset: 0.1 on the cloud, 1.0 locally).
    "KILN_TRACING": ("tracing", False),
    "KILN_TRACE_SAMPLE": ("trace_sample", False),
    # Fair queues: the plan table, who gets which plan, backpressure, the queue's TTL and
    # ageing, each provider account's capacity and how long a provider 429 narrows it.
    "KILN_PLANS": ("plans", False),
    "KILN_DEFAULT_PLAN": ("default_plan", False),
    "KILN_TELEGRAM_PLAN": ("telegram_plan", False),
    "KILN_PLAN_GRANTS": ("plan_grants", False),
    "KILN_MAX_WAITING": ("max_waiting", False),
    "KILN_QUEUE_TTL_SECONDS": ("queue_ttl_seconds", False),
    "KILN_QUEUE_AGEING_SECONDS": ("queue_ageing_seconds", False),
    "KILN_PROVIDER_CAPACITY": ("provider_capacity", False),
    "KILN_PROVIDER_BACKOFF_SECONDS": ("provider_backoff_seconds", False),
    # Scheduled checks of jobs that wait on a remote task (Cloud Tasks → Pub/Sub publish).
    "KILN_TASKS_LOCATION": ("tasks_location", False),
    "KILN_TASKS_QUEUE": ("tasks_queue", False),
    "KILN_TASKS_SERVICE_ACCOUNT": ("tasks_service_account", False),
    # How often a job waiting on a remote task is checked (0: the provider's own cadence).
    "KILN_POLL_FIRST_SECONDS": ("poll_first_seconds", False),
    "KILN_POLL_MAX_SECONDS": ("poll_max_seconds", False),
    # Provider callbacks: the ingress's public URL (given to providers that take a
    # per-task callback URL) and each provider's signing secret.
    "KILN_PUBLIC_URL": ("public_url", False),
    "KILN_TASKSERVER_WEBHOOK_SECRET": ("taskserver_webhook_secret", True),
    "KILN_MESHY_WEBHOOK_SECRET": ("meshy_webhook_secret", True),
    # Outbound webhooks: the retry schedule's scale, local only (the delivery benchmark
    # shrinks the Standard Webhooks schedule so it runs in minutes; 1 on the cloud).
    "KILN_WEBHOOK_SCHEDULE_SCALE": ("webhook_schedule_scale", False),
    # Standard emulator variables, honoured by the Google client libraries themselves.
    "FIRESTORE_EMULATOR_HOST": ("firestore_emulator_host", False),
    "PUBSUB_EMULATOR_HOST": ("pubsub_emulator_host", False),
    "STORAGE_EMULATOR_HOST": ("storage_emulator_host", False),
    "FIREBASE_AUTH_EMULATOR_HOST": ("auth_emulator_host", False),
    # Not a Google standard (the Tasks client has no emulator variable): read here only.
    "CLOUD_TASKS_EMULATOR_HOST": ("tasks_emulator_host", False),
}

_SECRET_ATTRS = frozenset(attr for attr, secret in ENV_VARS.values() if secret)

#: ``GRPC_EXPERIMENTS`` in the ingress's environment (the Terraform, the local stack); read
#: by gRPC when it is imported, not by Kiln. It keeps gRPC's older client I/O path, on
#: which the request's own thread reads the answer to its call; gRPC's EventEngine path
#: (its default since 1.80) reads it on a thread of its own and hands it over. Measured
#: at one client: 6–13 % less CPU per accepted job, 19–21 → 11–12 context switches per
#: request (docs/benchmarks.md, the eighth pass). gRPC plans to remove the choice;
#: tests/static/test_infra.py fails once the pinned grpcio no longer knows it.
INGRESS_GRPC_EXPERIMENTS = "-event_engine_client"


@dataclass(frozen=True)
class Settings:
    """Kiln's configuration. Build it with :meth:`from_env`; tests may construct it directly."""

    project: str = "demo-kiln"
    env: str = "cloud"  # "local" enables emulator-only behaviour (unsigned tokens, loopback)
    bucket: str = ""
    jobs_topic: str = "kiln-jobs"
    max_attempts: int = 3
    lease_seconds: float = 90.0
    worker_budget_seconds: float = 480.0
    sweeper_timeout_seconds: float = 120.0  # the sweeper function's own timeout (infra)
    job_max_age_seconds: float = 3 * 3600.0
    pending_republish_seconds: float = 60.0
    progress_interval_seconds: float = 1.0
    retry_backoff_seconds: float = 10.0
    link_template: str = "/jobs/{jobId}"
    max_body_bytes: int = 64 * 1024
    cors_origins: str = ""  # comma-separated browser origins for the HTTP API; local: "*"
    image_provider: str = "offline"
    model_provider: str = "offline"
    offline_image_seconds: float = 3.0
    offline_model_seconds: float = 8.0
    fcm_endpoint: str = ""
    telegram_bot_token: str = field(default="", repr=False)
    telegram_webhook_secret: str = field(default="", repr=False)
    telegram_api_base: str = "https://api.telegram.org"
    telegram_default_kind: str = "image"
    meshy_api_key: str = field(default="", repr=False)
    meshy_base_url: str = "https://api.meshy.ai"
    meshy_model: str = "meshy-7.1"  # pinned, as Meshy advises ("latest" moves)
    meshy_texture_model: str = "meshy-7"  # what paints a textured model
    gemini_api_key: str = field(default="", repr=False)
    gemini_model: str = "gemini-2.5-flash-image"
    taskserver_url: str = ""
    taskserver_api_key: str = field(default="", repr=False)
    allowed_fetch_hosts: str = ""
    max_artifact_bytes: int = 2 * 1024**3
    log_level: str = "INFO"
    tracing: str = "off"
    trace_sample: float = -1.0  # negative: kiln.tracing.DEFAULT_SAMPLE for the env
    plans: str = DEFAULT_PLANS
    default_plan: str = "free"  # an app user without a (trusted) ``plan`` claim
    telegram_plan: str = "free"  # every Telegram chat
    plan_grants: str = ""  # "uid=plan,..." an operator's grants (e.g. the local stack's users)
    max_waiting: int = 10_000  # jobs accepted but not started, across Kiln: beyond → 503
    queue_ttl_seconds: float = 3600.0  # a job that waits longer to start fails ``expired``
    queue_ageing_seconds: float = 30.0  # a waiting job gains one priority point per this
    provider_capacity: str = "8"  # K tasks at once per provider account: "K" or "name=K,..."
    provider_backoff_seconds: float = 60.0  # a provider 429 halves its window this long
    tasks_location: str = "us-central1"
    tasks_queue: str = "kiln-checks"
    tasks_service_account: str = ""
    poll_first_seconds: float = 0.0
    poll_max_seconds: float = 0.0
    public_url: str = ""
    taskserver_webhook_secret: str = field(default="", repr=False)
    meshy_webhook_secret: str = field(default="", repr=False)
    webhook_timeout_seconds: float = 15.0
    webhook_schedule_scale: float = 1.0
    webhook_progress_seconds: float = 10.0
    firestore_emulator_host: str = ""
    pubsub_emulator_host: str = ""
    storage_emulator_host: str = ""
    auth_emulator_host: str = ""
    tasks_emulator_host: str = ""

    def __post_init__(self) -> None:
        if self.env not in ("local", "cloud"):
            raise ConfigError(f"KILN_ENV must be 'local' or 'cloud', not {self.env!r}")
        if self.max_attempts < 1:
            raise ConfigError("KILN_MAX_ATTEMPTS must be at least 1")
        if self.lease_seconds <= self.progress_interval_seconds:
            raise ConfigError("KILN_LEASE_SECONDS must exceed KILN_PROGRESS_INTERVAL_SECONDS")
        if not 60 <= self.sweeper_timeout_seconds <= 1800:
            raise ConfigError("KILN_SWEEPER_TIMEOUT_SECONDS must be from 60 to 1800 "
                              "(the sweeper function's timeout; Cloud Scheduler's longest)")
        if not (self.meshy_model.strip() and self.meshy_texture_model.strip()):
            raise ConfigError("KILN_MESHY_MODEL and KILN_MESHY_TEXTURE_MODEL must name models")
        if "{jobId}" not in self.link_template:
            raise ConfigError("KILN_LINK_TEMPLATE must contain {jobId}")
        if not self.trace_sample <= 1.0:
            raise ConfigError("KILN_TRACE_SAMPLE must be a ratio from 0 to 1")
        try:
            check_tracing_mode(self.tracing)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.telegram_default_kind not in ("image", "model"):
            raise ConfigError("KILN_TELEGRAM_DEFAULT_KIND must be 'image' or 'model'")
        if self.env == "cloud" and self.webhook_schedule_scale != 1.0:
            raise ConfigError("KILN_WEBHOOK_SCHEDULE_SCALE is for the local stack only")
        if self.env == "cloud" and self.auth_emulator_host:
            # A deployed function must never accept unsigned tokens.
            raise ConfigError("FIREBASE_AUTH_EMULATOR_HOST is set outside KILN_ENV=local")
        if self.env == "local" and os.environ.get("K_SERVICE"):
            # K_SERVICE is set by Cloud Run: local mode there would trust unsigned tokens.
            raise ConfigError("KILN_ENV=local is refused on Cloud Run (K_SERVICE is set)")

        table = self.plan_table()
        check_plan_name(table, self.default_plan, "KILN_DEFAULT_PLAN")
        check_plan_name(table, self.telegram_plan, "KILN_TELEGRAM_PLAN")
        for uid, plan in self.grants().items():
            check_plan_name(table, plan, f"KILN_PLAN_GRANTS ({uid})")
        self.capacity_table()
        for f in fields(self):  # (float("nan") and "inf" read as numbers)
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{_var(f.name)} must be a finite number, got {value!r}")
        for name in ("max_waiting", "queue_ttl_seconds", "queue_ageing_seconds",
                     "provider_backoff_seconds", "lease_seconds", "worker_budget_seconds",
                     "job_max_age_seconds", "pending_republish_seconds",
                     "progress_interval_seconds", "retry_backoff_seconds", "max_body_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_var(name)} must be positive, got {getattr(self, name)!r}")
        for name in ("poll_first_seconds", "poll_max_seconds"):  # (0: the default)
            if getattr(self, name) < 0:
                raise ConfigError(f"{_var(name)} must not be negative, got "
                                  f"{getattr(self, name)!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError("KILN_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or "
                              f"CRITICAL, not {self.log_level!r}")

    def plan_table(self) -> Mapping[str, Plan]:
        """The plans of ``KILN_PLANS`` by name."""
        return parse_plans(self.plans)

    def grants(self) -> dict[str, str]:
        """``KILN_PLAN_GRANTS``: uid → plan name."""
        out: dict[str, str] = {}
        for item in (i.strip() for i in self.plan_grants.split(",") if i.strip()):
            uid, sep, plan = item.rpartition("=")
            if not sep or not uid:
                raise ConfigError(f"KILN_PLAN_GRANTS: {item!r} is not 'uid=plan'")
            out[uid.strip()] = plan.strip()
        return out

    def capacity_table(self) -> Mapping[str, int]:
        """``KILN_PROVIDER_CAPACITY``: provider → tasks at once (``*``: the rest)."""
        return parse_capacity(self.provider_capacity, 8)

    def prompt_max(self, kind: str) -> int:
        """The longest prompt a job of ``kind`` may have: Kiln's own limit, or the
        configured provider's where it takes fewer (Meshy: 600 characters)."""
        provider = self.model_provider if kind == "model" else self.image_provider
        return min(PROMPT_MAX, PROVIDER_PROMPT_MAX.get(provider, PROMPT_MAX))

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts,
                           initial_backoff=self.retry_backoff_seconds,
                           max_backoff=max(600.0, self.retry_backoff_seconds),
                           lease_seconds=self.lease_seconds,
                           max_age_seconds=self.job_max_age_seconds)

    def poll_cadence(self, default: PollCadence) -> PollCadence:
        """A provider's check cadence, with the operator's overrides; on the local stack
        (stand-ins whose tasks take seconds) checks start after half a second."""
        first = self.poll_first_seconds or (min(0.5, default.first) if self.local else default.first)
        top = self.poll_max_seconds or (min(5.0, default.max) if self.local else default.max)
        return PollCadence(first=first, factor=default.factor, max=max(first, top))

    @property
    def local(self) -> bool:
        return self.env == "local"

    @property
    def bucket_name(self) -> str:
        return self.bucket or f"{self.project}.appspot.com"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every variable in ``ENV_VARS``; unset ones keep their defaults.

        Raises:
            ConfigError: a value has the wrong type or an invalid combination.
        """
        environ = os.environ if environ is None else environ
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for var, (attr, _secret) in ENV_VARS.items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            values[attr] = _coerce(var, raw, types[attr])
        if "project" not in values and environ.get("GCLOUD_PROJECT"):
            values["project"] = environ["GCLOUD_PROJECT"]
        values.update(overrides)
        return cls(**values)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_ATTRS:
                value = "***" if value else ""
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    def secrets(self) -> list[str]:
        """The secret values that are set (for redaction)."""
        return [v for v in (getattr(self, a) for a in _SECRET_ATTRS) if v]


def _var(attribute: str) -> str:
    """The environment variable that sets ``attribute``."""
    return next((v for v, (a, _s) in ENV_VARS.items() if a == attribute), attribute)


def _coerce(var: str, raw: str, type_name: Any) -> Any:
    try:
        if type_name in ("int", int):
            return int(raw)
        if type_name in ("float", float):
            return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{var} must be a number, got {raw!r}") from exc
    return raw
