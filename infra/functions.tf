# The three functions. Each reads only the KILN_* variables its code path uses (the full
# list is kiln.settings.ENV_VARS; tests/static/test_infra.py keeps the two in step).
# Secrets arrive as environment variables from Secret Manager, never as plain values.
# THREADS sizes functions-framework's gunicorn thread pool to the instance concurrency.

module "ingress_source" {
  source     = "./modules/function_source"
  name       = "ingress"
  source_dir = "${local.build_dir}/ingress"
  output_dir = local.archive_dir
  bucket     = google_storage_bucket.sources.name
}

module "worker_source" {
  source     = "./modules/function_source"
  name       = "worker"
  source_dir = "${local.build_dir}/worker"
  output_dir = local.archive_dir
  bucket     = google_storage_bucket.sources.name
}

module "sweeper_source" {
  source     = "./modules/function_source"
  name       = "sweeper"
  source_dir = "${local.build_dir}/sweeper"
  output_dir = local.archive_dir
  bucket     = google_storage_bucket.sources.name
}

# --- ingress: the webhook and HTTP API ------------------------------------------------------

resource "google_cloudfunctions2_function" "ingress" {
  name        = "kiln-ingress"
  location    = var.region
  description = "Kiln webhook and HTTP API: authenticate, validate, record the job, publish, 202."
  labels      = local.labels

  build_config {
    runtime         = "python312"
    entry_point     = "ingress"
    service_account = google_service_account.builder.id

    source {
      storage_source {
        bucket = module.ingress_source.bucket
        object = module.ingress_source.object
      }
    }
  }

  service_config {
    available_memory                 = "512Mi"
    available_cpu                    = "1"
    timeout_seconds                  = 60 # Telegram waits at most 60 s for an answer
    max_instance_request_concurrency = var.ingress_concurrency
    min_instance_count               = var.ingress_min_instances
    max_instance_count               = var.ingress_max_instances
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.ingress.email

    environment_variables = {
      GOOGLE_CLOUD_PROJECT               = var.project_id
      KILN_ENV                           = "cloud"
      KILN_BUCKET                        = google_storage_bucket.results.name
      KILN_JOBS_TOPIC                    = google_pubsub_topic.jobs.name
      KILN_LOG_LEVEL                     = var.log_level
      KILN_TRACING                       = var.tracing
      KILN_TRACE_SAMPLE                  = var.trace_sample
      OTEL_SERVICE_NAME                  = "kiln-ingress" # names the spans' service
      KILN_MAX_ATTEMPTS                  = var.max_attempts
      KILN_LEASE_SECONDS                 = var.lease_seconds
      KILN_JOB_MAX_AGE_SECONDS           = var.job_max_age_seconds
      KILN_PENDING_REPUBLISH_SECONDS     = var.pending_republish_seconds
      KILN_RETRY_BACKOFF_SECONDS         = var.retry_backoff_seconds
      # The fair queue (issue 14): admission, places, TTL; pools are named by provider.
      KILN_PLANS                         = var.plans
      KILN_DEFAULT_PLAN                  = var.default_plan
      KILN_TELEGRAM_PLAN                 = var.telegram_plan
      KILN_PLAN_GRANTS                   = var.plan_grants
      KILN_MAX_WAITING                   = var.max_waiting
      KILN_QUEUE_TTL_SECONDS             = var.queue_ttl_seconds
      KILN_QUEUE_AGEING_SECONDS          = var.queue_ageing_seconds
      KILN_PROVIDER_CAPACITY             = var.provider_capacity
      KILN_PROVIDER_BACKOFF_SECONDS      = var.provider_backoff_seconds
      KILN_IMAGE_PROVIDER                = var.image_provider
      KILN_MODEL_PROVIDER                = var.model_provider
      KILN_MAX_BODY_BYTES                = var.max_body_bytes
      KILN_CORS_ORIGINS                  = join(",", var.cors_origins) # web app → HTTP API
      KILN_ALLOWED_FETCH_HOSTS           = var.allowed_fetch_hosts
      KILN_TELEGRAM_API_BASE             = var.telegram_api_base
      KILN_TELEGRAM_DEFAULT_KIND         = var.telegram_default_kind
      THREADS                            = var.ingress_concurrency
      # gRPC's older client I/O path: less CPU per accepted job (kiln.settings.INGRESS_GRPC_EXPERIMENTS).
      GRPC_EXPERIMENTS                   = "-event_engine_client"
    }

    secret_environment_variables {
      key        = "KILN_TELEGRAM_WEBHOOK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.telegram_webhook_secret.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "KILN_TELEGRAM_BOT_TOKEN"
      project_id = var.project_id
      secret     = google_secret_manager_secret.telegram_bot_token.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "KILN_TASKSERVER_WEBHOOK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.taskserver_webhook_secret.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "KILN_MESHY_WEBHOOK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.meshy_webhook_secret.secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.builder_log_writer,
    google_project_iam_member.builder_artifact_writer,
    google_project_iam_member.builder_gcf_staging_buckets,
    google_storage_bucket_iam_member.builder_reads_sources,
    google_secret_manager_secret_iam_member.ingress_telegram_webhook_secret,
    google_secret_manager_secret_iam_member.ingress_telegram_bot_token,
    google_secret_manager_secret_iam_member.ingress_taskserver_webhook_secret,
    google_secret_manager_secret_iam_member.ingress_meshy_webhook_secret,
  ]
}

# --- worker: runs one job per push ----------------------------------------------------------

resource "google_cloudfunctions2_function" "worker" {
  name        = "kiln-worker"
  location    = var.region
  description = "Kiln worker: claim, generate, upload, complete, notify. Fed by kiln-jobs-worker."
  labels      = local.labels

  build_config {
    runtime         = "python312"
    entry_point     = "worker"
    service_account = google_service_account.builder.id

    source {
      storage_source {
        bucket = module.worker_source.bucket
        object = module.worker_source.object
      }
    }
  }

  service_config {
    available_memory = "1Gi"
    available_cpu    = "1"
    # The event-driven limit; the worker hands a job on at KILN_WORKER_BUDGET_SECONDS.
    timeout_seconds                  = 540
    max_instance_request_concurrency = var.worker_concurrency
    min_instance_count               = 0
    max_instance_count               = var.worker_max_instances
    # Pub/Sub push from this project counts as internal traffic.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.worker.email

    environment_variables = {
      GOOGLE_CLOUD_PROJECT           = var.project_id
      KILN_ENV                       = "cloud"
      KILN_BUCKET                    = google_storage_bucket.results.name
      KILN_JOBS_TOPIC                = google_pubsub_topic.jobs.name
      KILN_LOG_LEVEL                 = var.log_level
      KILN_TRACING                   = var.tracing
      KILN_TRACE_SAMPLE              = var.trace_sample
      OTEL_SERVICE_NAME              = "kiln-worker" # names the spans' service
      KILN_MAX_ATTEMPTS              = var.max_attempts
      KILN_LEASE_SECONDS             = var.lease_seconds
      KILN_JOB_MAX_AGE_SECONDS       = var.job_max_age_seconds
      KILN_PENDING_REPUBLISH_SECONDS = var.pending_republish_seconds
      KILN_RETRY_BACKOFF_SECONDS     = var.retry_backoff_seconds
      # The fair queue (issue 14): admission, places, TTL; pools are named by provider.
      KILN_PLANS                     = var.plans
      KILN_DEFAULT_PLAN              = var.default_plan
      KILN_TELEGRAM_PLAN             = var.telegram_plan
      KILN_PLAN_GRANTS               = var.plan_grants
      KILN_MAX_WAITING               = var.max_waiting
      KILN_QUEUE_TTL_SECONDS         = var.queue_ttl_seconds
      KILN_QUEUE_AGEING_SECONDS      = var.queue_ageing_seconds
      KILN_PROVIDER_CAPACITY         = var.provider_capacity
      KILN_PROVIDER_BACKOFF_SECONDS  = var.provider_backoff_seconds
      KILN_WORKER_BUDGET_SECONDS     = var.worker_budget_seconds
      KILN_PROGRESS_INTERVAL_SECONDS = var.progress_interval_seconds
      KILN_LINK_TEMPLATE             = var.link_template
      KILN_IMAGE_PROVIDER            = var.image_provider
      KILN_MODEL_PROVIDER            = var.model_provider
      KILN_OFFLINE_IMAGE_SECONDS     = var.offline_image_seconds
      KILN_OFFLINE_MODEL_SECONDS     = var.offline_model_seconds
      KILN_GEMINI_MODEL              = var.gemini_model
      KILN_MESHY_BASE_URL            = var.meshy_base_url
      KILN_MESHY_MODEL               = var.meshy_model
      KILN_MESHY_TEXTURE_MODEL       = var.meshy_texture_model
      KILN_TASKSERVER_URL            = var.taskserver_url
      KILN_PUBLIC_URL                = coalesce(var.public_url, google_cloudfunctions2_function.ingress.url) # callbacks
      KILN_TASKS_LOCATION            = google_cloud_tasks_queue.checks.location
      KILN_TASKS_QUEUE               = google_cloud_tasks_queue.checks.name
      KILN_TASKS_SERVICE_ACCOUNT     = google_service_account.tasks.email
      KILN_POLL_FIRST_SECONDS        = var.poll_first_seconds
      KILN_POLL_MAX_SECONDS          = var.poll_max_seconds
      KILN_ALLOWED_FETCH_HOSTS       = var.allowed_fetch_hosts
      KILN_MAX_ARTIFACT_BYTES        = var.max_artifact_bytes
      KILN_TELEGRAM_API_BASE         = var.telegram_api_base
      THREADS                        = var.worker_concurrency
    }

    secret_environment_variables {
      key        = "KILN_TELEGRAM_BOT_TOKEN"
      project_id = var.project_id
      secret     = google_secret_manager_secret.telegram_bot_token.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "KILN_MESHY_API_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.meshy_api_key.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "KILN_GEMINI_API_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.gemini_api_key.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "KILN_TASKSERVER_API_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.taskserver_api_key.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "KILN_TASKSERVER_WEBHOOK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.taskserver_webhook_secret.secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.builder_log_writer,
    google_project_iam_member.builder_artifact_writer,
    google_project_iam_member.builder_gcf_staging_buckets,
    google_storage_bucket_iam_member.builder_reads_sources,
    google_secret_manager_secret_iam_member.worker_telegram_bot_token,
    google_secret_manager_secret_iam_member.worker_meshy_api_key,
    google_secret_manager_secret_iam_member.worker_gemini_api_key,
    google_secret_manager_secret_iam_member.worker_taskserver_api_key,
    google_secret_manager_secret_iam_member.worker_taskserver_webhook_secret,
    google_cloud_tasks_queue_iam_member.worker_enqueues_checks,
    google_service_account_iam_member.worker_acts_as_tasks,
  ]
}

# --- sweeper: every minute, from Cloud Scheduler ---------------------------------------------

resource "google_cloudfunctions2_function" "sweeper" {
  name        = "kiln-sweeper"
  location    = var.region
  description = "Kiln sweeper: re-publish stuck jobs, fail expired ones. Called by kiln-sweeper."
  labels      = local.labels

  build_config {
    runtime         = "python312"
    entry_point     = "sweeper"
    service_account = google_service_account.builder.id

    source {
      storage_source {
        bucket = module.sweeper_source.bucket
        object = module.sweeper_source.object
      }
    }
  }

  service_config {
    available_memory                 = "512Mi"
    available_cpu                    = "0.5"
    timeout_seconds                  = var.sweeper_timeout_seconds
    max_instance_request_concurrency = 1
    min_instance_count               = 0
    # One sweep at a time is enough; sweeps are safe to overlap but need not.
    max_instance_count = 1
    # Cloud Scheduler from this project counts as internal traffic.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.sweeper.email

    environment_variables = {
      GOOGLE_CLOUD_PROJECT           = var.project_id
      KILN_ENV                       = "cloud"
      KILN_BUCKET                    = google_storage_bucket.results.name
      KILN_JOBS_TOPIC                = google_pubsub_topic.jobs.name
      KILN_LOG_LEVEL                 = var.log_level
      KILN_TRACING                   = var.tracing
      KILN_TRACE_SAMPLE              = var.trace_sample
      OTEL_SERVICE_NAME              = "kiln-sweeper" # names the spans' service
      KILN_SWEEPER_TIMEOUT_SECONDS   = var.sweeper_timeout_seconds # redelivery ends before it
      KILN_MAX_ATTEMPTS              = var.max_attempts
      KILN_LEASE_SECONDS             = var.lease_seconds
      KILN_JOB_MAX_AGE_SECONDS       = var.job_max_age_seconds
      KILN_PENDING_REPUBLISH_SECONDS = var.pending_republish_seconds
      KILN_RETRY_BACKOFF_SECONDS     = var.retry_backoff_seconds
      # The fair queue (issue 14): admission, places, TTL; pools are named by provider.
      KILN_PLANS                     = var.plans
      KILN_DEFAULT_PLAN              = var.default_plan
      KILN_TELEGRAM_PLAN             = var.telegram_plan
      KILN_PLAN_GRANTS               = var.plan_grants
      KILN_MAX_WAITING               = var.max_waiting
      KILN_QUEUE_TTL_SECONDS         = var.queue_ttl_seconds
      KILN_QUEUE_AGEING_SECONDS      = var.queue_ageing_seconds
      KILN_PROVIDER_CAPACITY         = var.provider_capacity
      KILN_PROVIDER_BACKOFF_SECONDS  = var.provider_backoff_seconds
      KILN_IMAGE_PROVIDER            = var.image_provider
      KILN_MODEL_PROVIDER            = var.model_provider
      KILN_LINK_TEMPLATE             = var.link_template
      KILN_TELEGRAM_API_BASE         = var.telegram_api_base
      THREADS                        = 1
    }

    secret_environment_variables {
      key        = "KILN_TELEGRAM_BOT_TOKEN"
      project_id = var.project_id
      secret     = google_secret_manager_secret.telegram_bot_token.secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.builder_log_writer,
    google_project_iam_member.builder_artifact_writer,
    google_project_iam_member.builder_gcf_staging_buckets,
    google_storage_bucket_iam_member.builder_reads_sources,
    google_secret_manager_secret_iam_member.sweeper_telegram_bot_token,
  ]
}
