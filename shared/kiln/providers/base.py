"""The generation port: what every provider implements.

Providers come in two shapes and the worker drives both:

- :class:`SyncProvider` — one long call that returns the artifact (image models,
  the offline generator). It reports progress through a callback and checks
  ``should_stop`` so a cancel or lost lease stops it early.
- :class:`TaskProvider` — create a remote task, poll it, fetch its result (3D
  providers). The task id is checkpointed in the job; no invocation waits on it: each
  scheduled check (``cadence``) polls once, so waiting costs no worker time.

An :class:`Artifact` is a stream of chunks, never required to be whole in memory.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kiln.core.policy import PollCadence

CONTENT_TYPES = {"image": "image/png", "model": "model/gltf-binary"}
EXTENSIONS = {"image": "png", "model": "glb"}


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. ``options`` were validated at the edge."""

    job_id: str
    kind: str  # "image" | "model"
    prompt: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Artifact:
    """A generated file, as a stream of byte chunks.

    Attributes:
        kind: "image" or "model".
        content_type: MIME type to store it with.
        chunks: the bytes, in order; iterated exactly once.
        size: total bytes when known up front (for limits), else None.
        thumbnail: a small PNG when the provider gives one (kept in memory: it is small).
        provenance: what the provider reports about itself (model, credits, cost).
    """

    kind: str
    content_type: str
    chunks: Iterable[bytes]
    size: int | None = None
    thumbnail: bytes | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_bytes(cls, kind: str, data: bytes, **kw: Any) -> Artifact:
        return cls(kind=kind, content_type=CONTENT_TYPES[kind], chunks=iter_chunks(data),
                   size=len(data), **kw)


def iter_chunks(data: bytes, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start:start + chunk_size]


#: ``on_progress(percent, stage)``: percent 0–100, stage a short human step.
ProgressCallback = Callable[[int, str], None]


@runtime_checkable
class SyncProvider(Protocol):
    """A provider that generates in one call."""

    name: str

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        should_stop: Callable[[], bool],
    ) -> Artifact:
        """Generate the artifact.

        Raises:
            RetryableError: a passing fault.
            PermanentError: the request cannot succeed (refused, invalid).
            CanceledError: ``should_stop()`` turned true.
        """
        ...


class TaskState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class TaskStatus:
    """A remote task's state. ``task_id``, when set, replaces the polled id from now on.

    A provider whose one Kiln task is several remote tasks (a preview, then a refine)
    returns the next one's id here; the worker checkpoints it, then polls, fetches and
    cancels by it, so a later invocation resumes the current stage.
    """

    state: TaskState
    progress: int = 0
    stage: str = ""
    error_code: str = ""
    error_message: str = ""
    retryable: bool = False
    task_id: str = ""


@runtime_checkable
class TaskProvider(Protocol):
    """A provider with remote tasks: submit → poll → fetch (→ cancel)."""

    name: str
    cadence: PollCadence

    def submit(self, request: GenerationRequest) -> str:
        """Start a task; return the provider's task id."""
        ...

    def poll(self, task_id: str) -> TaskStatus:
        ...

    def fetch(self, task_id: str, request: GenerationRequest) -> Artifact:
        """Open the finished task's result as a stream."""
        ...

    def cancel(self, task_id: str) -> None:
        """Cancel the remote task where the provider allows it (best effort)."""
        ...


Provider = SyncProvider | TaskProvider
