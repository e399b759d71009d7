"""Cloud Storage adapter: stream a result into the bucket, validated and checksummed.

The artifact arrives as chunks and leaves as a resumable upload in fixed-size pieces, so
the worker's memory stays flat in the file's size. Each chunk goes through the
validator and a SHA-256 on the way; the upload is finalized only after the validator
accepted the whole file, so an invalid artifact never becomes an object in the bucket.
A file no larger than one piece (most images, every thumbnail) is held until it is
validated and sent in one request instead of a resumable session's two.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar, cast

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]
from google.cloud.storage import exceptions as storage_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY

from kiln import paced
from kiln.core.errors import KilnError, PermanentError, RetryableError
from kiln.ports import StoredObject, Validator

UPLOAD_CHUNK = 8 * 1024 * 1024  # a multiple of 256 KiB, as resumable uploads require
#: How long one read of a stored object retries Storage (the client's default is 120 s,
#: longer than a Telegram upload should wait before it is tried again later).
READ_RETRY_SECONDS = 15.0
READ_RETRY = DEFAULT_RETRY.with_timeout(READ_RETRY_SECONDS)
READ_TIMEOUT = 60.0  # one request to Storage (the client's default)
T = TypeVar("T")


class CloudStorage:
    """One bucket; objects get a Firebase download token."""

    def __init__(
        self,
        bucket: str,
        client: storage.Client | None = None,
        *,
        project: str | None = None,
        emulator_host: str = "",
        chunk_size: int = UPLOAD_CHUNK,
        read_retry: Any = READ_RETRY,
        upload_retry: Any = DEFAULT_RETRY,
    ) -> None:
        if client is None:
            if emulator_host:
                client = storage.Client(project=project, credentials=AnonymousCredentials(),
                                        client_options={"api_endpoint": emulator_host})
            else:
                client = storage.Client(project=project)
        self.client = client
        self.bucket = client.bucket(bucket)
        self.emulator_host = emulator_host.rstrip("/")
        self.chunk_size = chunk_size
        self.read_retry, self.upload_retry = read_retry, upload_retry

    def put_stream(
        self,
        path: str,
        chunks: Iterable[bytes],
        content_type: str,
        validator: Validator | None = None,
    ) -> StoredObject:
        """Upload ``chunks`` to ``path``; finalize only if ``validator`` accepts them.

        Raises:
            PermanentError: the validator refused the artifact (nothing is stored).
            RetryableError: Cloud Storage failed; an unfinished upload leaves no object.
        """
        token = str(uuid.uuid4())
        blob = self.bucket.blob(path, chunk_size=self.chunk_size)
        blob.metadata = {"firebaseStorageDownloadTokens": token}
        blob.cache_control = "private, max-age=3600"
        digest = hashlib.sha256()
        total = 0
        writer = None
        held: list[bytes] = []  # the start of the file, until it outgrows one piece
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                if validator is not None:
                    validator.feed(chunk)
                digest.update(chunk)
                total += len(chunk)
                if writer is None:
                    held.append(chunk)
                    if total <= self.chunk_size:
                        continue
                    writer = blob.open("wb", content_type=content_type, chunk_size=self.chunk_size,
                                       retry=self.upload_retry)
                    chunk, held = b"".join(held), []
                writer.write(chunk)
            if validator is not None:
                validator.finish()
            if writer is not None:
                writer.close()  # sends the last piece: only now does the object exist
            elif total:  # a file of one piece: one request (multipart), once validated
                blob.upload_from_string(b"".join(held), content_type=content_type,
                                        retry=self.upload_retry)
        except KilnError:
            _abandon(writer)
            raise
        except STORAGE_ERRORS as exc:
            _abandon(writer)
            raise RetryableError("Cloud Storage is unavailable.", code="storage_unavailable") from exc
        except BaseException:
            _abandon(writer)
            raise
        if total == 0:
            raise PermanentError("The provider returned an empty file.", code="invalid_artifact")
        return StoredObject(path, content_type, total, digest.hexdigest(), self.download_url(path, token))

    def put_bytes(self, path: str, data: bytes, content_type: str) -> StoredObject:
        return self.put_stream(path, [data], content_type)

    def download_url(self, path: str, token: str) -> str:
        """A Firebase download URL (no expiry until the token is revoked)."""
        quoted = urllib.parse.quote(path, safe="")
        if self.emulator_host:
            return (f"{self.emulator_host}/download/storage/v1/b/{self.bucket.name}/o/"
                    f"{quoted}?alt=media")
        return (f"https://firebasestorage.googleapis.com/v0/b/{self.bucket.name}/o/{quoted}"
                f"?alt=media&token={token}")

    def open(self, path: str, chunk_size: int) -> IO[bytes]:
        """A seekable reader of a stored object that holds ``chunk_size`` at a time. Opening
        asks nothing of Storage; its reads do, each within the deadline of the call under
        way (:func:`kiln.paced.ending_by`), and a read that fails or runs out of time
        raises ``RetryableError`` (:class:`_Reader`)."""
        return cast(IO[bytes], _Reader(self.bucket.blob(path), chunk_size, self.read_retry))

    def exists(self, path: str) -> bool:
        return self.bucket.blob(path).exists()

    def read(self, path: str) -> bytes:
        return self.bucket.blob(path).download_as_bytes()

    def delete(self, path: str) -> None:
        with contextlib.suppress(gexc.NotFound):
            self.bucket.blob(path).delete()

    def list(self, prefix: str) -> list[str]:
        return [b.name for b in self.client.list_blobs(self.bucket, prefix=prefix)]


def _abandon(writer: Any) -> None:
    """Drop an unfinished resumable upload without finalizing it.

    ``BlobWriter.close()`` (also run by ``__del__``) would upload the buffered tail and so
    finalize a partial object; closing its buffer first makes ``close()`` a no-op. The
    unfinished session expires on the server by itself (``terminate()`` would delete it,
    but with a call that can wait minutes on the Storage that just failed).
    """
    if writer is None:
        return
    buffer = getattr(writer, "_buffer", None)
    if buffer is not None and not buffer.closed:
        buffer.close()


#: What Storage's client raises when Storage (or the way to it) fails: its API errors, the
#: resumable upload's own (not API errors), a credential that cannot be refreshed, and
#: the transport's.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    gexc.GoogleAPIError, storage_exceptions.InvalidResponse, storage_exceptions.DataCorruption,
    auth_exceptions.GoogleAuthError, OSError, ValueError)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except STORAGE_ERRORS as exc:
        raise RetryableError("The result could not be read.", code="storage_unavailable") from exc


class _Reader(io.BufferedIOBase):
    """A stored object's seekable reader: one ranged download of ``chunk_size`` bytes at a
    time. Each download waits at most what is left of the call under way
    (:func:`kiln.paced.time_left`: a Telegram upload streaming the file ends by its own
    deadline, not by Storage's 60 s per read and its retries), and a read that fails or
    finds no time left raises ``RetryableError``: the caller tries again later."""

    def __init__(self, blob: Any, chunk_size: int, retry: Any) -> None:
        super().__init__()
        self._blob, self._chunk, self._retry = blob, max(1, chunk_size), retry
        self._pos, self._held, self._held_at = 0, b"", 0
        self._size: int | None = None  # known once a download comes back short

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = math.inf if size is None or size < 0 else size
        parts: list[bytes] = []
        got = 0
        while got < wanted:
            offset = self._pos - self._held_at
            if not 0 <= offset < len(self._held):
                if self._size is not None and self._pos >= self._size:
                    break
                self._held, self._held_at, offset = self._download(self._pos), self._pos, 0
                if not self._held:
                    break
            piece = self._held[offset:offset + int(min(wanted - got, len(self._held)))]
            parts.append(piece)
            got += len(piece)
            self._pos += len(piece)
        return b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            if self._size is None:
                self._size = _in_time(self._stored_size, self._retry)
            offset += self._size
        elif whence == io.SEEK_CUR:
            offset += self._pos
        if offset < 0:
            raise ValueError("negative seek position")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def _stored_size(self, timeout: float, retry: Any) -> int:
        self._blob.reload(timeout=timeout, retry=retry)
        return int(self._blob.size or 0)

    def _download(self, start: int) -> bytes:
        def ranged(timeout: float, retry: Any) -> bytes:
            try:
                return bytes(self._blob.download_as_bytes(
                    start=start, end=start + self._chunk - 1, checksum=None, timeout=timeout,
                    retry=retry))
            except gexc.RequestRangeNotSatisfiable:
                return b""  # at or past the end

        data = _in_time(ranged, self._retry)
        if len(data) > self._chunk:  # the Range was not honoured: the offsets mean nothing
            raise RetryableError("The result could not be read.", code="storage_unavailable")
        if (data and len(data) < self._chunk) or (not data and start == 0):
            self._size = start + len(data)  # a short answer from inside the object: its end
        return data


#: Timed reads running at once, abandoned ones included: past it Storage is taken to be
#: stalled, and a read fails at once instead of leaving one more thread waiting on it.
MAX_TIMED_READS = 32
_READERS = threading.BoundedSemaphore(MAX_TIMED_READS)


def _in_time(call: Callable[[float, Any], T], retry: Any) -> T:
    """``call(timeout, retry)`` against Storage, within what is left of the call under way
    (:func:`kiln.paced.time_left`; no limit outside one but Storage's 60 s per request and
    ``retry``'s own). ``RetryableError``: ``storage_timeout`` when the time runs out,
    ``storage_unavailable`` when Storage fails.

    With a deadline the call runs on a daemon thread of its own and the wait for it is
    cut at the deadline, whatever Storage does meanwhile (retries, or bytes dripping in
    under each read's timeout); an abandoned call finishes or times out on its own, and
    holds up no other read nor the process's exit."""
    left = paced.time_left()
    if left <= 0.05:
        raise RetryableError("The result could not be read in time.", code="storage_timeout")
    timeout = min(READ_TIMEOUT, left)
    if retry is not None:
        retry = retry.with_timeout(min(READ_RETRY_SECONDS, timeout))
    with _translated():
        if left == math.inf:
            return call(timeout, retry)
        if not _READERS.acquire(blocking=False):  # that many still hang: Storage stalls
            raise RetryableError("The result could not be read just now.",
                                 code="storage_unavailable")
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append((True, call(timeout, retry)))
            except BaseException as exc:  # handed to the caller
                outcome.append((False, exc))
            finally:
                _READERS.release()
                done.set()

        threading.Thread(target=run, name="storage-read", daemon=True).start()
        if not done.wait(left):
            raise RetryableError("The result could not be read in time.",
                                 code="storage_timeout")
        ok, value = outcome[0]
        if not ok:
            raise value
        return cast(T, value)
