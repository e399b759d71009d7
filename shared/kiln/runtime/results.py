"""A job's result in the bucket: where it lives (contract) and how it gets there.

The artifact streams through a validator and a SHA-256 into ``generations/{uid}/{jobId}/``;
images get a thumbnail (a small image's is uploaded at the same time as the image). Paths
are deterministic, so a re-run overwrites the same object instead of leaving a second
artifact.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kiln import log, tracing
from kiln.core.errors import PermanentError
from kiln.core.job import Job
from kiln.ports import BlobStore, StoredObject
from kiln.providers.base import EXTENSIONS, Artifact
from kiln.runtime.artifacts import make_thumbnail, validator_for

THUMBNAIL_SOURCE_MAX = 20 * 1024 * 1024  # images up to this size get a thumbnail made here
#: Images up to this size (known up front) are held whole: validated, then uploaded at the
#: same time as their thumbnail (one upload piece: kiln.adapters.storage).
SMALL_IMAGE = 8 * 1024 * 1024

logger = log.get("worker")


def result_path(uid: str, job_id: str, ext: str) -> str:
    """Where a job's result lives (contract): ``generations/{uid}/{jobId}/result.{ext}``."""
    return f"generations/{uid}/{job_id}/result.{ext}"


def thumbnail_path(uid: str, job_id: str) -> str:
    return f"generations/{uid}/{job_id}/thumb.png"


@tracing.traced("kiln.store")
def store_result(blobs: BlobStore, job: Job, artifact: Artifact, *,
                 max_bytes: int) -> dict[str, Any]:
    """Stream the artifact (validated) into the bucket; add a thumbnail. The job's
    ``result`` field."""
    if artifact.size is not None and artifact.size > max_bytes:
        raise PermanentError("The result is larger than this service accepts.",
                             code="artifact_too_large")
    if artifact.kind == "image" and artifact.thumbnail is None and artifact.size is not None \
            and artifact.size <= SMALL_IMAGE:
        return _store_small_image(blobs, job, artifact, max_bytes)
    kept: list[bytes] | None = None
    chunks: Iterable[bytes] = artifact.chunks
    if artifact.kind == "image" and artifact.thumbnail is None and (
            artifact.size is None or artifact.size <= THUMBNAIL_SOURCE_MAX):
        kept = []
        chunks = _tee(chunks, kept, THUMBNAIL_SOURCE_MAX)
    stored = blobs.put_stream(
        result_path(job.uid, job.id, EXTENSIONS[artifact.kind]), chunks, artifact.content_type,
        validator_for(artifact.content_type, max_bytes=max_bytes),
    )
    # A provider's own thumbnail is made again here: sized as promised, and read (a file
    # that only starts like a PNG is no thumbnail). The image's own is its pixels read.
    thumbnail = _thumbnail_of(artifact.thumbnail, ours=False) if artifact.thumbnail else None
    if thumbnail is None and kept:
        try:
            thumbnail = _thumbnail_of(b"".join(kept))
        except PermanentError:  # its pixels cannot be read: no job names the file
            discard(blobs, {"path": stored.path})
            raise
    thumb = blobs.put_bytes(thumbnail_path(job.uid, job.id), thumbnail, "image/png") \
        if thumbnail else None
    return _result(stored, thumb)


def _store_small_image(blobs: BlobStore, job: Job, artifact: Artifact,
                       max_bytes: int) -> dict[str, Any]:
    """An image known to be small: validated whole first, then the result and its
    thumbnail are uploaded at the same time (nothing is stored unless it is valid)."""
    data = _whole(artifact.chunks, min(artifact.size or SMALL_IMAGE, SMALL_IMAGE))
    check = validator_for(artifact.content_type, max_bytes=max_bytes)
    check.feed(data)
    check.finish()

    small = _thumbnail_of(data)  # (its pixels read before anything is stored)

    def thumbnail() -> StoredObject | None:
        return None if small is None else blobs.put_bytes(thumbnail_path(job.uid, job.id),
                                                          small, "image/png")

    thumb = _uploads().submit(contextvars.copy_context().run, thumbnail)
    try:
        stored = blobs.put_stream(result_path(job.uid, job.id, EXTENSIONS["image"]), [data],
                                  artifact.content_type)
    finally:
        made = thumb.result()  # (its error, if any, is the job's, as in the streamed path)
    return _result(stored, made)


def _whole(chunks: Iterable[bytes], limit: int) -> bytes:
    """The chunks joined, refused as soon as they pass ``limit`` (a provider that declared
    a small size and sends a large body is never held whole)."""
    parts, total = [], 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise PermanentError("The result is larger than its provider declared.",
                                 code="invalid_artifact")
        parts.append(chunk)
    return b"".join(parts)


def _thumbnail_of(image: bytes, *, ours: bool = True) -> bytes | None:
    """The image's thumbnail, or None when none can be made here (too many pixels for
    this worker to decode; a provider's thumbnail that cannot be read): the result
    stands without one.

    Raises:
        PermanentError: ``invalid_artifact``: ``ours`` (the job's own image) has pixels
            that cannot be read (its chunks' checks passed, its data does not decode).
    """
    try:
        return make_thumbnail(image)
    except PermanentError as exc:
        if ours and exc.code == "invalid_artifact":
            raise PermanentError("The image could not be read: its pixel data is broken.",
                                 code="invalid_artifact") from exc
        log.event(logger, "thumbnail skipped", logging.WARNING, code=exc.code)
        return None


def discard(blobs: BlobStore, result: Mapping[str, Any]) -> None:
    """Delete the files of a result no job will name (its job was canceled while they
    uploaded); one that cannot be deleted now is logged."""
    for path in filter(None, (result.get("path"), result.get("thumbnailPath"))):
        try:
            blobs.delete(str(path))
        except Exception as exc:
            log.event(logger, "result of a canceled job not deleted", logging.WARNING,
                      path=str(path), error=type(exc).__name__)


def _result(stored: StoredObject, thumb: StoredObject | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "path": stored.path,
        "contentType": stored.content_type,
        "bytes": stored.bytes,
        "sha256": stored.sha256,
        "downloadUrl": stored.download_url,
    }
    if thumb is not None:
        result["thumbnailPath"] = thumb.path
        result["thumbnailUrl"] = thumb.download_url
    return result


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _uploads() -> ThreadPoolExecutor:
    """Thumbnail uploads beside their results (one per delivery in flight at most)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(16, thread_name_prefix="kiln-thumbnail")
        return _pool


def _tee(chunks: Iterable[bytes], kept: list[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total <= limit:
            kept.append(chunk)
        else:
            kept.clear()
        yield chunk
