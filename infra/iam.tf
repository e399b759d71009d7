# One service account per function, each with only what its code does. Every grant says
# why. No primitive roles (owner/editor/viewer) anywhere.

resource "google_service_account" "ingress" {
  account_id   = "kiln-ingress"
  display_name = "Kiln ingress function"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "worker" {
  account_id   = "kiln-worker"
  display_name = "Kiln worker function"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "sweeper" {
  account_id   = "kiln-sweeper"
  display_name = "Kiln sweeper function (also the scheduler's caller identity)"
  depends_on   = [google_project_service.apis]
}

# Identity in the OIDC token of the worker's push subscription.
resource "google_service_account" "pusher" {
  account_id   = "kiln-pubsub-push"
  display_name = "Kiln Pub/Sub push to the worker"
  depends_on   = [google_project_service.apis]
}

# Cloud Build runs the functions' builds as this account, not the default compute one.
resource "google_service_account" "builder" {
  account_id   = "kiln-function-builder"
  display_name = "Kiln function builds"
  depends_on   = [google_project_service.apis]
}

# FCM's only predefined role also manages topic subscriptions; sending needs one permission.
resource "google_project_iam_custom_role" "fcm_sender" {
  role_id     = "kilnFcmSender"
  title       = "Kiln FCM sender"
  description = "Send FCM messages (HTTP v1 messages:send) and nothing else."
  permissions = ["cloudmessaging.messages.create"]
}

# --- ingress ---------------------------------------------------------------------------------

# Creates and reads jobs/{jobId}, idempotency keys and Telegram chat quotas.
resource "google_project_iam_member" "ingress_datastore_user" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.ingress.email}"
}

# Writes its spans (KILN_TRACING=cloud) to Cloud Trace: cloudtrace.traces.patch only.
resource "google_project_iam_member" "ingress_trace_agent" {
  project = var.project_id
  role    = "roles/cloudtrace.agent"
  member  = "serviceAccount:${google_service_account.ingress.email}"
}

# Verifying an app user's ID token (check_revoked) looks the user up in Firebase Auth
# (Identity Toolkit accounts:lookup: firebaseauth.users.get); without it every new token
# is a 503 auth_unavailable.
resource "google_project_iam_member" "ingress_firebaseauth_viewer" {
  project = var.project_id
  role    = "roles/firebaseauth.viewer"
  member  = "serviceAccount:${google_service_account.ingress.email}"
}

# Sends an app batch's one push when a cancel through the API ends its last open job
# (POST /v1/batches/{id}:cancel, or :cancel of that job): the batch is announced there.
resource "google_project_iam_member" "ingress_fcm_sender" {
  project = var.project_id
  role    = google_project_iam_custom_role.fcm_sender.id
  member  = "serviceAccount:${google_service_account.ingress.email}"
}

# Publishes {jobId} after creating the job; this topic only.
resource "google_pubsub_topic_iam_member" "ingress_publishes_jobs" {
  topic  = google_pubsub_topic.jobs.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.ingress.email}"
}

# Compares X-Telegram-Bot-Api-Secret-Token with this value on every update.
resource "google_secret_manager_secret_iam_member" "ingress_telegram_webhook_secret" {
  secret_id = google_secret_manager_secret.telegram_webhook_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.ingress.email}"
}

# Answers Telegram commands (acknowledgement, /status) through the Bot API.
resource "google_secret_manager_secret_iam_member" "ingress_telegram_bot_token" {
  secret_id = google_secret_manager_secret.telegram_bot_token.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.ingress.email}"
}

# Verifies the task server's signed callbacks (POST /v1/providers/taskserver/events).
resource "google_secret_manager_secret_iam_member" "ingress_taskserver_webhook_secret" {
  secret_id = google_secret_manager_secret.taskserver_webhook_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.ingress.email}"
}

# Compares the ?token= of Meshy's webhooks (POST /v1/providers/meshy/events).
resource "google_secret_manager_secret_iam_member" "ingress_meshy_webhook_secret" {
  secret_id = google_secret_manager_secret.meshy_webhook_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.ingress.email}"
}

# Anyone may call the ingress: it authenticates each request itself (Firebase ID token,
# Telegram secret token).
resource "google_cloud_run_v2_service_iam_member" "ingress_public" {
  location = google_cloudfunctions2_function.ingress.location
  name     = google_cloudfunctions2_function.ingress.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# --- worker ----------------------------------------------------------------------------------

# Claims jobs in transactions, writes progress and results, reads and prunes device tokens.
resource "google_project_iam_member" "worker_datastore_user" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.worker.email}"
}

# Writes its spans (KILN_TRACING=cloud) to Cloud Trace: cloudtrace.traces.patch only.
resource "google_project_iam_member" "worker_trace_agent" {
  project = var.project_id
  role    = "roles/cloudtrace.agent"
  member  = "serviceAccount:${google_service_account.worker.email}"
}

# Uploads results (and overwrites them on a retried attempt) in the results bucket only:
# objectUser creates, reads, updates and deletes objects, without objectAdmin's power over
# object ACLs and retention.
resource "google_storage_bucket_iam_member" "worker_results_object_user" {
  bucket = google_storage_bucket.results.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.worker.email}"
}

# Hands a long job on to a fresh invocation by re-publishing {jobId}.
resource "google_pubsub_topic_iam_member" "worker_publishes_jobs" {
  topic  = google_pubsub_topic.jobs.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.worker.email}"
}

# Sends the completion push.
resource "google_project_iam_member" "worker_fcm_sender" {
  project = var.project_id
  role    = google_project_iam_custom_role.fcm_sender.id
  member  = "serviceAccount:${google_service_account.worker.email}"
}

# Sends progress and results to Telegram chats.
resource "google_secret_manager_secret_iam_member" "worker_telegram_bot_token" {
  secret_id = google_secret_manager_secret.telegram_bot_token.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker.email}"
}

# Calls Meshy (text/image to 3D).
resource "google_secret_manager_secret_iam_member" "worker_meshy_api_key" {
  secret_id = google_secret_manager_secret.meshy_api_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker.email}"
}

# Calls Gemini (images).
resource "google_secret_manager_secret_iam_member" "worker_gemini_api_key" {
  secret_id = google_secret_manager_secret.gemini_api_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker.email}"
}

# Calls the task server provider, when one is configured.
resource "google_secret_manager_secret_iam_member" "worker_taskserver_api_key" {
  secret_id = google_secret_manager_secret.taskserver_api_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker.email}"
}

# Only the push subscription's identity may invoke the worker.
resource "google_cloud_run_v2_service_iam_member" "worker_invoked_by_pusher" {
  location = google_cloudfunctions2_function.worker.location
  name     = google_cloudfunctions2_function.worker.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.pusher.email}"
}

# --- sweeper ---------------------------------------------------------------------------------

# Scans pending/processing jobs and fails expired ones in transactions.
resource "google_project_iam_member" "sweeper_datastore_user" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.sweeper.email}"
}

# Writes its spans (KILN_TRACING=cloud) to Cloud Trace: cloudtrace.traces.patch only.
resource "google_project_iam_member" "sweeper_trace_agent" {
  project = var.project_id
  role    = "roles/cloudtrace.agent"
  member  = "serviceAccount:${google_service_account.sweeper.email}"
}

# Re-publishes stuck jobs.
resource "google_pubsub_topic_iam_member" "sweeper_publishes_jobs" {
  topic  = google_pubsub_topic.jobs.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.sweeper.email}"
}

# Failing an expired job sends its failure push (kiln.runtime.sweeper -> kiln.runtime.notify).
resource "google_project_iam_member" "sweeper_fcm_sender" {
  project = var.project_id
  role    = google_project_iam_custom_role.fcm_sender.id
  member  = "serviceAccount:${google_service_account.sweeper.email}"
}

# A Telegram result it sends again (a delivery deferred while Telegram was down, a lost
# end notification) is the file itself, read from the results bucket: read only.
resource "google_storage_bucket_iam_member" "sweeper_results_object_viewer" {
  bucket = google_storage_bucket.results.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.sweeper.email}"
}

# ...and its Telegram failure reply.
resource "google_secret_manager_secret_iam_member" "sweeper_telegram_bot_token" {
  secret_id = google_secret_manager_secret.telegram_bot_token.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.sweeper.email}"
}

# Cloud Scheduler calls the sweeper with an OIDC token of the sweeper's own account.
resource "google_cloud_run_v2_service_iam_member" "sweeper_invoked_by_scheduler" {
  location = google_cloudfunctions2_function.sweeper.location
  name     = google_cloudfunctions2_function.sweeper.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.sweeper.email}"
}

# --- function builds -------------------------------------------------------------------------

# Writes build logs.
resource "google_project_iam_member" "builder_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.builder.email}"
}

# Pushes the built images to the gcf-artifacts repository (created by Cloud Functions).
resource "google_project_iam_member" "builder_artifact_writer" {
  project = var.project_id
  role    = "roles/artifactregistry.writer"
  member  = "serviceAccount:${google_service_account.builder.email}"
}

# Reads the uploaded source archives.
resource "google_storage_bucket_iam_member" "builder_reads_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.builder.email}"
}

# Reads and writes the buckets Cloud Functions stages builds in (gcf-v2-sources-*,
# gcf-v2-uploads-*), and no other bucket.
resource "google_project_iam_member" "builder_gcf_staging_buckets" {
  project = var.project_id
  role    = "roles/storage.objectAdmin"
  member  = "serviceAccount:${google_service_account.builder.email}"

  condition {
    title      = "gcf-staging-buckets-only"
    expression = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-\") || resource.name.startsWith(\"projects/_/buckets/gcf-v2-uploads-\")"
  }
}

# Asks the task server for signed callbacks only when their secret is configured.
resource "google_secret_manager_secret_iam_member" "worker_taskserver_webhook_secret" {
  secret_id = google_secret_manager_secret.taskserver_webhook_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.worker.email}"
}
