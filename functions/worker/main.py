"""Worker (Pub/Sub → CloudEvent): runs one job per delivery. Raising nacks (redelivery)."""

import functions_framework
from cloudevents.http import CloudEvent

from kiln.compose import check_environment, get_services
from kiln.runtime.worker import handle_message

check_environment(providers=True)  # a wrong setting stops the start, naming it


@functions_framework.cloud_event
def worker(cloud_event: CloudEvent) -> None:
    handle_message(cloud_event.data, get_services())
