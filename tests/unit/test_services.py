"""Services: one set of clients per Services object, however many a process builds."""

from __future__ import annotations

import gc

import firebase_admin

from kiln.compose import Services
from kiln.settings import Settings


def test_services_built_one_after_another_each_get_their_own_firebase_app() -> None:
    """A Services collected and rebuilt (often at the same address) never reuses an app name.

    firebase_admin keeps every app registered by name for the life of the process; a name
    taken from id() came back as soon as the old object was collected (CI: "Firebase app
    named kiln-… already exists" in the second providers test).
    """
    settings = Settings.from_env({"KILN_ENV": "local", "GOOGLE_CLOUD_PROJECT": "demo-services"})
    apps: list[firebase_admin.App] = []
    try:
        for _ in range(20):
            services = Services(settings)
            apps.append(services.firebase_app)
            assert services.firebase_app is apps[-1]
            del services
            gc.collect()
        assert len({app.name for app in apps}) == 20
    finally:
        for app in apps:
            firebase_admin.delete_app(app)
