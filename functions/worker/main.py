"""Worker (Pub/Sub → CloudEvent): runs one job per delivery. Raising nacks (redelivery)."""

import functions_framework
from cloudevents.http import CloudEvent

from kiln.compose import get_services
from kiln.runtime.worker import handle_message


@functions_framework.cloud_event
def worker(cloud_event: CloudEvent) -> None:
    handle_message(cloud_event.data, get_services())
