"""kiln-client: submit jobs and batches to Kiln with an API key, wait for them, and verify
Kiln's signed webhooks.

    from kiln_client import KilnClient, verify_webhook

    with KilnClient("https://…/ingress", api_key) as kiln:
        batch = kiln.submit_batch([{"kind": "image", "prompt": f"tile {i}"} for i in range(14)])
        job = kiln.wait(batch.job_ids[0], on_progress=lambda j: print(j.progress))
"""

from kiln_client._client import KilnClient
from kiln_client.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    KilnError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    UnavailableError,
    WaitTimeout,
    WebhookVerificationError,
)
from kiln_client.models import Batch, Job, JobResult, Submitted, SubmittedBatch, WebhookEvent
from kiln_client.webhooks import verify_webhook

__all__ = [
    "ApiError", "AuthenticationError", "BadRequestError", "Batch", "ConflictError", "Job",
    "JobResult", "KilnClient", "KilnError", "NotFoundError", "PermissionDeniedError",
    "QuotaExceededError", "Submitted", "SubmittedBatch", "UnavailableError", "WaitTimeout", "WebhookEvent",
    "WebhookVerificationError", "verify_webhook",
]
