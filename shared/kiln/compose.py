"""The composition root: one place that builds Kiln's ports from settings.

``Services(settings)`` wires the real adapters, each built on first use from the explicit
endpoints in ``settings`` (no client reads ``os.environ``), so several stacks can live in
one process. Tests pass fakes for any port (``Services(settings, store=…, clock=…)``);
the local stack passes its development generators (``providers=``). Entry points call
:func:`get_services` (settings from the environment, read once).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kiln import log, tracing
from kiln.adapters.clock import SystemClock
from kiln.channels.telegram.notifier import TelegramChannel
from kiln.ports import (
    BatchStore,
    BlobStore,
    Channel,
    Clock,
    Counters,
    DeviceStore,
    JobStore,
    KeyStore,
    Push,
    Queue,
    Scheduler,
    Slots,
    TaskIndex,
    Verifier,
    WebhookStore,
)
from kiln.providers.base import Provider
from kiln.settings import ConfigError, Settings
from kiln.webhooks.channel import ApiChannel

if TYPE_CHECKING:
    from kiln.core.job import Job
    from kiln.runtime.keys import ApiKeyVerifier

ProviderFactory = Callable[[Settings], Provider]


class Services:
    """Everything a Kiln entry point talks to, as ports."""

    def __init__(
        self,
        settings: Settings,
        *,
        providers: Mapping[str, ProviderFactory] | None = None,
        store: JobStore | None = None,
        devices: DeviceStore | None = None,
        queue: Queue | None = None,
        blobs: BlobStore | None = None,
        push: Push | None = None,
        auth: Verifier | None = None,
        clock: Clock | None = None,
        channels: Mapping[str, Channel] | None = None,
        scheduler: Scheduler | None = None,
        task_index: TaskIndex | None = None,
        counters: Counters | None = None,
        slots: Slots | None = None,
        keys: KeyStore | None = None,
        batches: BatchStore | None = None,
        webhooks: WebhookStore | None = None,
    ) -> None:
        self.settings = settings
        self.policy = settings.retry_policy()
        self.worker_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.clock: Clock = clock or SystemClock()
        #: Channels with a conversation of their own, registered here explicitly.
        self.channels: Mapping[str, Channel] = (
            {"telegram": TelegramChannel(), "api": ApiChannel()} if channels is None else channels)
        self._provider_factories = providers
        self._providers: dict[str, Provider] = {}
        self._lock = threading.RLock()
        given = {"store": store, "devices": devices, "queue": queue, "blobs": blobs,
                 "push": push, "auth": auth, "scheduler": scheduler, "task_index": task_index,
                 "keys": keys, "batches": batches, "webhooks": webhooks,
                 "counters": counters, "slots": slots}
        self.__dict__.update({name: port for name, port in given.items() if port is not None})
        log.redact_values(settings.secrets())

    # Each real adapter is built on first use (the ingress never builds Storage; it builds
    # FCM only for a cancel that ends an app batch, whose push it then sends).

    @functools.cached_property
    def firebase_app(self) -> Any:
        from kiln.adapters.firebase_auth import firebase_app

        return firebase_app(self.settings)

    @functools.cached_property
    def firestore(self) -> Any:
        from kiln.adapters.firestore import connect

        return connect(self.settings.project, self.settings.firestore_emulator_host)

    @functools.cached_property
    def store(self) -> JobStore:
        from kiln.adapters.firestore import FirestoreJobStore

        return FirestoreJobStore(self.firestore)

    @functools.cached_property
    def devices(self) -> DeviceStore:
        from kiln.adapters.firestore_devices import FirestoreDeviceStore

        return FirestoreDeviceStore(self.firestore)

    @functools.cached_property
    def queue(self) -> Queue:
        from kiln.adapters.pubsub import PubSubQueue

        return PubSubQueue.connect(self.settings.project, self.settings.jobs_topic,
                                   emulator_host=self.settings.pubsub_emulator_host)

    @functools.cached_property
    def scheduler(self) -> Scheduler:
        from kiln.adapters.cloudtasks import CloudTasksScheduler

        return CloudTasksScheduler.connect(self.settings)

    @functools.cached_property
    def task_index(self) -> TaskIndex:
        from kiln.adapters.firestore_tasks import FirestoreTaskIndex

        return FirestoreTaskIndex(self.firestore)

    @functools.cached_property
    def webhooks(self) -> WebhookStore:
        from kiln.adapters.firestore_webhooks import FirestoreWebhookStore

        return FirestoreWebhookStore(self.firestore)

    @functools.cached_property
    def counters(self) -> Counters:
        from kiln.adapters.firestore_queue import FirestoreCounters

        return FirestoreCounters(self.firestore)

    @functools.cached_property
    def slots(self) -> Slots:
        from kiln.adapters.firestore_queue import FirestoreSlots

        return FirestoreSlots(self.firestore)

    @functools.cached_property
    def blobs(self) -> BlobStore:
        from kiln.adapters.storage import CloudStorage

        return CloudStorage(self.settings.bucket_name, project=self.settings.project,
                            emulator_host=self.settings.storage_emulator_host)

    @functools.cached_property
    def auth(self) -> Verifier:
        from kiln.adapters.firebase_auth import FirebaseAuth

        # The local stack's unsigned tokens have no Auth server to ask about revocation.
        # Their claims are unsigned too: anyone could write ``plan`` into one.
        local_tokens = bool(self.settings.auth_emulator_host)
        return FirebaseAuth(self.firebase_app, check_revoked=not local_tokens,
                            trust_claims=not local_tokens)

    @functools.cached_property
    def keys(self) -> KeyStore:
        from kiln.adapters.keys import FirestoreKeyStore

        return FirestoreKeyStore(self.firestore)

    @functools.cached_property
    def batches(self) -> BatchStore:
        from kiln.adapters.batches import FirestoreBatchStore

        return FirestoreBatchStore(self.firestore)

    @functools.cached_property
    def api_keys(self) -> ApiKeyVerifier:
        """The API-key verifier, with its short cache."""
        from kiln.runtime.keys import ApiKeyVerifier

        return ApiKeyVerifier(self.keys, self.clock)

    @functools.cached_property
    def push(self) -> Push:
        from kiln.adapters.fcm import FcmPush

        endpoint = self.settings.fcm_endpoint if self.settings.local else ""
        return FcmPush(self.firebase_app, endpoint=endpoint)

    def provider(self, kind: str) -> Provider:
        """The configured provider for ``kind`` (cached per kind)."""
        with self._lock:
            if kind not in self._providers:
                from kiln.providers.registry import build_provider

                name = self.settings.image_provider if kind == "image" else self.settings.model_provider
                self._providers[kind] = build_provider(name, self.settings,
                                                       factories=self._provider_factories)
            return self._providers[kind]

    def provider_of(self, job: Job) -> Provider:
        """The provider that holds ``job``'s remote task: the one it was submitted to
        (``server.provider``), which a redeploy may have replaced with another for new
        jobs; the configured one when it has no task.

        Raises:
            ConfigError: that provider can no longer be built (unknown, no key).
        """
        recorded = job.server.provider
        if not job.server.provider_task_id or not recorded:
            return self.provider(job.kind)
        try:  # (a configured provider that cannot be built must not strand this job's task)
            configured: Provider | None = self.provider(job.kind)
        except ConfigError:
            configured = None
        if configured is not None and recorded == configured.name:
            return configured
        from kiln.providers.registry import build_provider

        with self._lock:
            key = f"{job.kind}:{recorded}"
            if key not in self._providers:
                self._providers[key] = build_provider(recorded, self.settings,
                                                      factories=self._provider_factories)
            return self._providers[key]


_services_lock = threading.Lock()


@functools.cache
def _process_services() -> Services:
    settings = Settings.from_env()
    log.setup(settings.log_level)
    try:
        tracing.configure(settings)
    except Exception as exc:  # (a file it cannot open, no credentials): serve untraced
        log.event(log.get("compose"), "tracing is off: it could not be set up",
                  logging.ERROR, mode=settings.tracing, error=type(exc).__name__,
                  detail=str(exc)[:300])
    return Services(settings)


def check_environment(*, providers: bool = False) -> None:
    """Read the environment's settings as a function starts (its module's import), so a
    wrong value stops the start, naming its variable, instead of failing every request;
    with ``providers`` (the worker), build the configured providers too (an unknown name,
    a missing key), instead of failing every job ``provider_unconfigured``.

    Raises:
        ConfigError: a setting is missing or wrong.
    """
    settings = Settings.from_env()
    if providers:
        from kiln.providers.registry import build_provider

        for kind, name in (("image", settings.image_provider), ("model", settings.model_provider)):
            build_provider(name, settings, kind)


def get_services() -> Services:
    """The process-wide services, from the environment (read once, here), built by the
    first call (concurrent first requests build one)."""
    with _services_lock:
        return _process_services()


def reset_services() -> None:
    """Forget the process-wide services (the next call reads the environment again)."""
    with _services_lock:
        _process_services.cache_clear()
