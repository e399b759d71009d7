# Pub/Sub only wakes workers; Firestore is the source of truth. The worker is an
# HTTP-invoked function fed by a push subscription we own (not an Eventarc trigger), so
# the retry policy, the ack deadline and the dead-letter policy are ours to set.

resource "google_pubsub_topic" "jobs" {
  name   = "kiln-jobs"
  labels = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "jobs_dead" {
  name   = "kiln-jobs-dead"
  labels = local.labels
  # Kept for a week so operators can seek/replay even after the pull subscription acked.
  message_retention_duration = "604800s"

  depends_on = [google_project_service.apis]
}

# Pushes each {jobId} to the worker. functions-framework turns the raw push body into a
# CloudEvent (google.cloud.pubsub.topic.v1.messagePublished) for the worker's entry point.
resource "google_pubsub_subscription" "worker_push" {
  name   = "kiln-jobs-worker"
  topic  = google_pubsub_topic.jobs.id
  labels = local.labels

  # A push waits for the handler up to the ack deadline; 600 s (the maximum) covers the
  # worker's 540 s timeout, so a slow job is not redelivered while it is still running.
  ack_deadline_seconds = 600

  push_config {
    # The /projects/.../topics/... path lets functions-framework fill the CloudEvent source.
    push_endpoint = "${google_cloudfunctions2_function.worker.service_config[0].uri}/projects/${var.project_id}/topics/${google_pubsub_topic.jobs.name}"

    oidc_token {
      service_account_email = google_service_account.pusher.email
      audience              = google_cloudfunctions2_function.worker.service_config[0].uri
    }
  }

  # A raised error (retryable) is a non-2xx answer: redeliver with backoff.
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  # Poison messages stop after 10 deliveries; Firestore attempt counting usually ends a
  # job long before (KILN_MAX_ATTEMPTS), the DLQ catches what it cannot.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.jobs_dead.id
    max_delivery_attempts = 10
  }

  expiration_policy {
    ttl = "" # never expire for inactivity
  }

  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_dead_letter_publisher,
    google_service_account_iam_member.pubsub_agent_mints_pusher_tokens,
  ]
}

# Operators inspect and replay dead letters from here (docs/deploy.md).
resource "google_pubsub_subscription" "jobs_dead" {
  name                       = "kiln-jobs-dead-sub"
  topic                      = google_pubsub_topic.jobs_dead.id
  labels                     = local.labels
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# --- the Pub/Sub service agent ---------------------------------------------------------------

resource "google_project_service_identity" "pubsub" {
  provider = google-beta
  service  = "pubsub.googleapis.com"

  depends_on = [google_project_service.apis]
}

# Dead-lettering republishes the message to the DLQ as the service agent; without this
# grant dead-lettering fails silently.
resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letter_publisher" {
  topic  = google_pubsub_topic.jobs_dead.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

# ...and it must be able to ack the forwarded message on the source subscription.
resource "google_pubsub_subscription_iam_member" "pubsub_agent_source_subscriber" {
  subscription = google_pubsub_subscription.worker_push.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_project_service_identity.pubsub.email}"
}

# Push requests carry an OIDC token of the pusher account, minted by the service agent
# (needed explicitly in projects created before April 2021; harmless otherwise).
resource "google_service_account_iam_member" "pubsub_agent_mints_pusher_tokens" {
  service_account_id = google_service_account.pusher.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_project_service_identity.pubsub.email}"
}
