"""Firestore adapter of ``kiln.ports.DeviceStore``: a user's devices for push
(``users/{uid}/devices/{deviceId}``, written by the apps under infra/firestore.rules)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from kiln import log
from kiln.adapters.firestore import unavailable_is_retryable
from kiln.core.job import MAX_DEVICES, Device, newest

logger = log.get("push")
#: Other users' registrations of one address read at most (a shared tablet's few).
ELSEWHERE_LIMIT = 20
#: A user's device documents read at most for one push, newest first (the newest
#: MAX_DEVICES addresses get it).
READ_LIMIT = 100


class FirestoreDeviceStore:
    """Devices in ``users/{uid}/devices/{deviceId}``."""

    def __init__(self, client: firestore.Client) -> None:
        self.client = client

    def _collection(self, uid: str) -> Any:
        return self.client.collection("users").document(uid).collection("devices")

    def devices(self, uid: str) -> list[Device]:
        """The user's newest registered devices that have an address (an FID or a token;
        ``MAX_DEVICES``), but not one another user registered since (``Device.moved``:
        that one is deleted)."""
        with unavailable_is_retryable("device store"):
            snaps = {snap.id: snap for snap in self._collection(uid).order_by(
                "updatedAt", direction=firestore.Query.DESCENDING).limit(READ_LIMIT).stream()}
            if len(snaps) < MAX_DEVICES:  # (a registration without updatedAt is in no order)
                snaps |= {snap.id: snap for snap in self._collection(uid).limit(READ_LIMIT).stream()}
            found = (Device.from_doc(i, snap.to_dict() or {}) for i, snap in snaps.items())
            kept = []
            for device in newest(device for device in found if device is not None):
                snap = snaps[device.id]
                if not device.moved(self._elsewhere(uid, device)):
                    kept.append(device)
                    continue
                # As read: the user may have signed in on it again meanwhile (written
                # since: it is theirs again, for the next push).
                self._delete_as_read(snap)
        return kept

    def _delete_as_read(self, snap: Any) -> None:
        """Delete a registration only if nothing wrote it since ``snap`` was read."""
        with contextlib.suppress(gexc.FailedPrecondition):
            snap.reference.delete(
                option=self.client.write_option(last_update_time=snap.update_time))

    def _elsewhere(self, uid: str, device: Device) -> list[Device]:
        """Other users' registrations of the device's address (any ``devices`` collection
        under ``users``; a collection-group index on fid and token, infra/firestore.tf)."""
        name, value = device.address
        query = self.client.collection_group("devices").where(
            filter=firestore.FieldFilter(name, "==", value)).limit(ELSEWHERE_LIMIT)
        try:
            found = list(query.stream())
        except gexc.FailedPrecondition:  # the index is not deployed yet: push as before
            log.event(logger, "device lookup across users needs its index", logging.WARNING)
            return []
        others = []
        for snap in found:
            owner = snap.reference.parent.parent
            if owner is None or owner.id == uid or owner.parent.id != "users":
                continue
            other = Device.from_doc(snap.id, snap.to_dict() or {})
            if other is not None:
                others.append(other)
        return others

    def delete_device(self, uid: str, device: Device) -> None:
        with unavailable_is_retryable("device store"):
            snap = self._collection(uid).document(device.id).get()
            now = Device.from_doc(device.id, snap.to_dict() or {}) if snap.exists else None
            if now is None or now.address != device.address:
                return  # gone, or registered again with its new address: kept
            self._delete_as_read(snap)
