"""A job's result in the bucket: where it lives (contract) and how it gets there.

The artifact streams through a validator and a SHA-256 into ``generations/{uid}/{jobId}/``;
images get a thumbnail. Paths are deterministic, so a re-run overwrites the same object
instead of leaving a second artifact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from kiln import tracing
from kiln.core.errors import PermanentError
from kiln.core.job import Job
from kiln.ports import BlobStore
from kiln.providers.base import EXTENSIONS, Artifact
from kiln.runtime.artifacts import make_thumbnail, validator_for

THUMBNAIL_SOURCE_MAX = 20 * 1024 * 1024  # images up to this size get a thumbnail made here


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
    result: dict[str, Any] = {
        "path": stored.path,
        "contentType": stored.content_type,
        "bytes": stored.bytes,
        "sha256": stored.sha256,
        "downloadUrl": stored.download_url,
    }
    thumbnail = artifact.thumbnail
    if thumbnail is None and kept:
        thumbnail = make_thumbnail(b"".join(kept))
    if thumbnail:
        thumb = blobs.put_bytes(thumbnail_path(job.uid, job.id), thumbnail, "image/png")
        result["thumbnailPath"] = thumb.path
        result["thumbnailUrl"] = thumb.download_url
    return result


def _tee(chunks: Iterable[bytes], kept: list[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total <= limit:
            kept.append(chunk)
        else:
            kept.clear()
        yield chunk
