"""Dependencies, built lazily once per process (never at import).

Entry points call :func:`get_services`; tests build a :class:`Services` with their own
settings. Each client is created on first use and cached.
"""

from __future__ import annotations

import functools
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import firebase_admin
import google.oauth2.credentials
from firebase_admin import credentials as fb_credentials
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from kiln import log
from kiln.adapters.fcm import FcmPush
from kiln.adapters.firebase_auth import FirebaseAuth
from kiln.adapters.firestore import JobStore
from kiln.adapters.pubsub import PubSubQueue
from kiln.adapters.storage import BlobStore
from kiln.providers.base import Provider
from kiln.settings import Settings

ProviderFactory = Callable[[Settings], Provider]


class _LocalCredential(fb_credentials.Base):
    """A fixed bearer token for the local FCM server: there is no Google to ask."""

    def get_credential(self) -> Any:
        return google.oauth2.credentials.Credentials(token="kiln-local-token")


class Services:
    """Everything a Kiln entry point talks to."""

    def __init__(self, settings: Settings, *,
                 providers: Mapping[str, ProviderFactory] | None = None) -> None:
        self.settings = settings
        self._provider_factories = providers
        self.worker_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._lock = threading.RLock()
        log.redact_values(settings.secrets())

    @functools.cached_property
    def firebase_app(self) -> firebase_admin.App:
        cred: fb_credentials.Base
        cred = _LocalCredential() if self.settings.local else fb_credentials.ApplicationDefault()
        # Unique for the life of the process: firebase_admin keeps every app registered by
        # name, and an object's id() comes back once the object is collected.
        name = f"kiln-{uuid.uuid4().hex}"
        return firebase_admin.initialize_app(
            cred, {"projectId": self.settings.project}, name=name
        )

    @functools.cached_property
    def firestore(self) -> firestore.Client:
        if self.settings.firestore_emulator_host:
            return firestore.Client(project=self.settings.project,
                                    credentials=AnonymousCredentials())
        return firestore.Client(project=self.settings.project)

    @functools.cached_property
    def store(self) -> JobStore:
        return JobStore(self.firestore)

    @functools.cached_property
    def queue(self) -> PubSubQueue:
        return PubSubQueue(self.settings.project, self.settings.jobs_topic)

    @functools.cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(
            self.settings.bucket_name,
            project=self.settings.project,
            emulator_host=self.settings.storage_emulator_host,
        )

    @functools.cached_property
    def auth(self) -> FirebaseAuth:
        return FirebaseAuth(self.firebase_app)

    @functools.cached_property
    def push(self) -> FcmPush:
        endpoint = self.settings.fcm_endpoint if self.settings.local else ""
        return FcmPush(self.firebase_app, endpoint=endpoint)

    def provider(self, kind: str) -> Provider:
        """The configured provider for ``kind`` (cached per kind)."""
        with self._lock:
            cache: dict[str, Provider] = self.__dict__.setdefault("_providers", {})
            if kind not in cache:
                from kiln.providers.registry import build_provider

                name = self.settings.image_provider if kind == "image" else self.settings.model_provider
                cache[kind] = build_provider(name, self.settings,
                                             factories=self._provider_factories)
            return cache[kind]


_services: Services | None = None
_services_lock = threading.Lock()


def get_services() -> Services:
    """The process-wide services, from the environment, built on first call."""
    global _services
    with _services_lock:
        if _services is None:
            settings = Settings.from_env()
            log.setup(settings.log_level)
            _services = Services(settings)
        return _services
