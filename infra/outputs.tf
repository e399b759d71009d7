output "webhook_url" {
  description = "Telegram webhook: pass it to setWebhook together with the webhook secret."
  value       = "${google_cloudfunctions2_function.ingress.service_config[0].uri}/telegram/webhook"
}

output "api_url" {
  description = "Base URL of the HTTP API (POST /v1/jobs, GET /v1/jobs/{jobId}, /healthz)."
  value       = google_cloudfunctions2_function.ingress.service_config[0].uri
}

output "bucket_name" {
  description = "Results bucket (KILN_BUCKET)."
  value       = google_storage_bucket.results.name
}

output "jobs_topic" {
  description = "Topic the ingress publishes {jobId} to."
  value       = google_pubsub_topic.jobs.name
}

output "dead_letter_subscription" {
  description = "Pull subscription for inspecting and replaying dead-lettered jobs."
  value       = google_pubsub_subscription.jobs_dead.name
}

output "worker_service" {
  description = "Cloud Run service behind the worker (for revisions and traffic rollbacks)."
  value       = google_cloudfunctions2_function.worker.service_config[0].service
}
