# Scheduled checks of jobs that wait on a remote task (docs/deploy.md, Cloud Tasks): the
# worker creates one task per check, named {jobId}-c{n}; at its time Cloud Tasks POSTs the
# check message to the jobs topic's Pub/Sub REST publish as kiln-tasks, and the worker's
# push subscription delivers it like any other job message.

resource "google_cloud_tasks_queue" "checks" {
  name     = "kiln-checks" # KILN_TASKS_QUEUE (kiln.settings default)
  location = var.region

  # A publish is one small HTTP call; the cap only keeps a burst of due checks from
  # outrunning the worker's instances (Pub/Sub buffers the rest anyway).
  rate_limits {
    max_dispatches_per_second = var.tasks_max_dispatches_per_second
    max_concurrent_dispatches = 100
  }

  # A failed publish (a Pub/Sub 5xx, a token hiccup) is retried for up to an hour; after
  # that the check is lost and the sweeper sends another (docs/reliability.md).
  retry_config {
    max_attempts       = 20
    max_retry_duration = "3600s"
    min_backoff        = "1s"
    max_backoff        = "300s"
    max_doublings      = 6
  }

  stackdriver_logging_config {
    sampling_ratio = 0.1
  }

  depends_on = [google_project_service.apis]
}

# The identity in each check's OAuth token: it may only publish to the jobs topic.
resource "google_service_account" "tasks" {
  account_id   = "kiln-tasks"
  display_name = "Kiln scheduled checks (Cloud Tasks to Pub/Sub)"
  depends_on   = [google_project_service.apis]
}

# Cloud Tasks publishes each due check message to the jobs topic as this account.
resource "google_pubsub_topic_iam_member" "tasks_publishes_jobs" {
  topic  = google_pubsub_topic.jobs.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.tasks.email}"
}

# The worker schedules a waiting job's next check on the checks queue (and nowhere else).
resource "google_cloud_tasks_queue_iam_member" "worker_enqueues_checks" {
  name     = google_cloud_tasks_queue.checks.name
  location = google_cloud_tasks_queue.checks.location
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.worker.email}"
}

# A task with an OAuth token of kiln-tasks needs its creator to act as that account.
resource "google_service_account_iam_member" "worker_acts_as_tasks" {
  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.worker.email}"
}
