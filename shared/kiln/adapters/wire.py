"""The acknowledgement's two calls, sent as raw protobuf on the SDK clients' own channels.

Accepting a job is one Firestore ``Commit`` (the job's documents and its quota tickets)
and one Pub/Sub ``Publish``. Through the SDKs each call builds its request as proto-plus
messages (about fifty per job) and passes interceptors and wrappers; measured, that was
half of the ingress's CPU (docs/benchmarks.md). Here the same two RPCs are built as the
raw protobuf classes and sent on the SDK client's gRPC channel, so its credentials,
endpoint and emulator settings apply unchanged, with the SDK's metadata. Errors are
turned into ``google.api_core`` exceptions, as the SDKs raise them, before the retry
policy sees them.

Only these two requests are built here; every other call goes through the SDKs.
tests/integration/test_wire.py creates documents both ways and reads them back equal.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.api_core.gapic_v1 import routing_header
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.field_path import FieldPath
from google.cloud.firestore_v1.types import firestore as firestore_types
from google.cloud.firestore_v1.types import write
from google.pubsub_v1 import PublisherClient
from google.pubsub_v1.types import pubsub as pubsub_types

from kiln.core import sentinels

_CommitRequest = firestore_types.CommitRequest.pb()
_CommitResponse = firestore_types.CommitResponse.pb()
_PublishRequest = pubsub_types.PublishRequest.pb()
_PublishResponse = pubsub_types.PublishResponse.pb()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_REQUEST_TIME = write.DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME


class Unary:
    """One unary RPC with raw protobuf messages on an existing channel: ``retry`` over the
    whole call, each attempt's deadline what is left of the call's time, gRPC errors
    raised as api_core exceptions."""

    def __init__(self, channel: grpc.Channel, method: str, request: Any, response: Any, *,
                 metadata: Sequence[tuple[str, str]], timeout: float,
                 retry: retries.Retry) -> None:
        self._call = channel.unary_unary(method, request_serializer=_serialized,
                                         response_deserializer=response.FromString)
        self.method, self.metadata, self.timeout = method, tuple(metadata), timeout
        self._retry = retry
        self._retried: Callable[[Any, float], Any] = retry(self._once)

    def __call__(self, request: Any, timeout: float | None = None) -> Any:
        """The response; ``timeout`` (seconds, retries included) shortens the call's own."""
        if timeout is None or timeout >= self.timeout:
            return self._retried(request, time.monotonic() + self.timeout)
        return self._retry.with_timeout(timeout)(self._once)(request, time.monotonic() + timeout)

    def _once(self, request: Any, deadline: float) -> Any:
        try:  # (the retry checks its timeout only between attempts: this bounds the last)
            return self._call(request, timeout=max(deadline - time.monotonic(), 0.001),
                              metadata=self.metadata)
        except grpc.RpcError as exc:
            raise gexc.from_grpc_error(exc) from exc


def _serialized(request: Any) -> bytes:
    """A request's wire bytes: a message serialized, or bytes already serialized."""
    return request if isinstance(request, bytes) else request.SerializeToString()


#: The SDK's own retry policy for Commit (ResourceExhausted, ServiceUnavailable), bounded
#: for a webhook: past ``COMMIT_TIMEOUT`` the caller answers 503 and nothing was accepted.
COMMIT_TIMEOUT = 10.0


class Creates:
    """Creates documents in one commit, each only if it does not exist yet."""

    def __init__(self, client: firestore.Client, *, timeout: float = COMMIT_TIMEOUT) -> None:
        self.timeout = timeout
        self.database = client._database_string
        transport = client._firestore_api._transport
        self._root = f"{self.database}/documents/"
        self._commit = Unary(
            transport.grpc_channel, "/google.firestore.v1.Firestore/Commit",
            _CommitRequest, _CommitResponse,
            metadata=[*client._rpc_metadata,
                      routing_header.to_grpc_metadata((("database", self.database),))],
            timeout=timeout,
            retry=retries.Retry(initial=0.1, maximum=1.0, multiplier=1.3, timeout=timeout,
                                predicate=retries.if_exception_type(
                                    gexc.ResourceExhausted, gexc.ServiceUnavailable)))

    def commit(self, documents: Sequence[tuple[str, Mapping[str, Any]]], *,
               timeout: float | None = None) -> None:
        """Create each ``(path, fields)`` (a path below the database's ``documents``).
        Fields hold what the SDK would take, with Kiln's sentinels for server values.
        ``timeout`` (seconds, retries included) shortens the call's own.

        Raises:
            google.api_core.exceptions.AlreadyExists: one of them exists (none was written).
            google.api_core.exceptions.GoogleAPIError: the commit failed.
        """
        self.send([self.encode(documents)], timeout=timeout)

    def encode(self, documents: Sequence[tuple[str, Mapping[str, Any]]],
               absent: Sequence[str] = ()) -> Any:
        """The writes that create each ``(path, fields)`` if no document of ``absent``
        exists, as a commit request for :meth:`send`. Each of ``absent`` is checked by a
        delete that requires it not to exist: it writes nothing, and fails the commit
        with "already exists" as a create would.

        Raises:
            ValueError, TypeError: a value Firestore cannot hold (nothing was sent).
        """
        request = _CommitRequest(database=self.database)
        for path, fields in documents:
            change = request.writes.add()
            change.update.name = self._root + path
            change.current_document.exists = False
            _encode_map(fields, change.update.fields, change, ())
        for path in absent:
            check = request.writes.add()
            check.delete = self._root + path
            check.current_document.exists = False
        return request

    def send(self, encoded: Sequence[Any], *, timeout: float | None = None) -> None:
        """Commit the writes of one or more :meth:`encode` results (of one caller or
        several) at once: all of them or none. Raises as :meth:`commit`."""
        # Serialized protobuf messages concatenated are the serialization of the messages
        # merged: one request with every caller's writes (and the one database), built
        # without copying the writes into a new message.
        request = encoded[0] if len(encoded) == 1 else \
            b"".join(each.SerializeToString() for each in encoded)
        self._commit(request, timeout)


def written(change: Any) -> str:
    """The document one write of a commit request names (created, or checked absent)."""
    return str(change.update.name or change.delete)


def _encode_map(values: Mapping[str, Any], out: Any, change: Any,
                path: tuple[str, ...]) -> None:
    for name, value in values.items():
        if value is sentinels.SERVER_TIME or value is firestore.SERVER_TIMESTAMP:
            transform = change.update_transforms.add()
            transform.field_path = FieldPath(*path, name).to_api_repr()
            transform.set_to_server_value = _REQUEST_TIME
        elif value is sentinels.DELETE or value is firestore.DELETE_FIELD:
            raise ValueError(f"Cannot delete field {name!r} of a document being created.")
        else:
            _encode_value(value, out[name], change, (*path, name))


def _encode_value(value: Any, out: Any, change: Any, path: tuple[str, ...]) -> None:
    # The types of _helpers.encode_value, most common first; anything else is its job.
    if value is None:
        out.null_value = 0
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bool):
        out.boolean_value = value
    elif isinstance(value, int):
        out.integer_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, dt.datetime):  # naive is UTC, as the SDK takes it
        since = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)) - _EPOCH
        stamp = out.timestamp_value  # (Timestamp.FromDatetime is pure Python, 4× slower)
        stamp.seconds, stamp.nanos = since.days * 86400 + since.seconds, since.microseconds * 1000
    elif isinstance(value, dict):
        out.map_value.SetInParent()
        _encode_map(value, out.map_value.fields, change, path)
    elif isinstance(value, (list, tuple)):
        out.array_value.SetInParent()
        values = out.array_value.values
        for item in value:
            _encode_value(item, values.add(), change, path)
    else:
        out.CopyFrom(_helpers.encode_value(value)._pb)


#: The SDK's retry predicate for Publish.
PUBLISH_RETRYABLE = retries.if_exception_type(
    gexc.Aborted, gexc.Cancelled, gexc.DeadlineExceeded, gexc.InternalServerError,
    gexc.ResourceExhausted, gexc.ServiceUnavailable, gexc.Unknown)


class Publish:
    """Publishes messages to one topic in one call."""

    def __init__(self, client: PublisherClient, topic: str, *, timeout: float) -> None:
        self.topic = topic
        transport: Any = client.transport  # a gRPC one (the client's default)
        self._publish = Unary(
            transport.grpc_channel, "/google.pubsub.v1.Publisher/Publish",
            _PublishRequest, _PublishResponse,
            metadata=[routing_header.to_grpc_metadata((("topic", topic),))], timeout=timeout,
            retry=retries.Retry(initial=0.05, maximum=1.0, multiplier=2.0, timeout=timeout,
                                predicate=PUBLISH_RETRYABLE))

    def __call__(self, messages: Sequence[tuple[bytes, Mapping[str, str]]], *,
                 timeout: float | None = None) -> list[str]:
        """The server's message ids, in the order of ``messages`` (``(data, attributes)``
        each); ``timeout`` shortens the call's own. Pub/Sub takes all or none.

        Raises:
            google.api_core.exceptions.GoogleAPIError: Pub/Sub did not take the messages.
        """
        request = _PublishRequest(topic=self.topic)
        for data, attributes in messages:
            message = request.messages.add()
            message.data = data
            message.attributes.update(attributes)
        return list(self._publish(request, timeout).message_ids)
