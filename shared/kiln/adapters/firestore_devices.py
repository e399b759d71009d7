"""Firestore adapter of ``kiln.ports.DeviceStore``: a user's devices for push
(``users/{uid}/devices/{deviceId}``, written by the apps under infra/firestore.rules)."""

from __future__ import annotations

from typing import Any

from google.cloud import firestore

from kiln.adapters.firestore import unavailable_is_retryable
from kiln.core.job import Device


class FirestoreDeviceStore:
    """Devices in ``users/{uid}/devices/{deviceId}``."""

    def __init__(self, client: firestore.Client) -> None:
        self.client = client

    def _collection(self, uid: str) -> Any:
        return self.client.collection("users").document(uid).collection("devices")

    def devices(self, uid: str) -> list[Device]:
        """The user's registered devices that have an address (an FID or a token)."""
        with unavailable_is_retryable("device store"):
            found = [Device.from_doc(snap.id, snap.to_dict() or {})
                     for snap in self._collection(uid).stream()]
        return [device for device in found if device is not None]

    def delete_device(self, uid: str, device_id: str) -> None:
        with unavailable_is_retryable("device store"):
            self._collection(uid).document(device_id).delete()
