# --- where --------------------------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project to deploy into (Firebase must already be enabled on it)."
  type        = string
}

variable "region" {
  description = "Region of the functions, buckets, Pub/Sub resources and the scheduler job."
  type        = string
  default     = "us-central1"
}

variable "firestore_location" {
  description = "Location of the (default) Firestore database; it cannot change once created."
  type        = string
  default     = "nam5"
}

variable "bucket_name" {
  description = "Results bucket; empty means \"<project_id>-kiln-results\"."
  type        = string
  default     = ""
}

variable "cors_origins" {
  description = "Web origins allowed to call the HTTP API (KILN_CORS_ORIGINS) and to download results from the bucket."
  type        = list(string)
  default     = ["*"]
}

variable "result_retention_days" {
  description = "Results under generations/ are deleted this many days after upload."
  type        = number
  default     = 90
}

variable "labels" {
  description = "Labels added to every labelled resource (cost attribution)."
  type        = map(string)
  default     = {}
}

# --- scaling --------------------------------------------------------------------------------

variable "ingress_concurrency" {
  description = "Requests one ingress instance serves at once (THREADS matches it)."
  type        = number
  default     = 16
}

variable "ingress_min_instances" {
  description = "Warm ingress instances; 1 removes cold starts from the webhook path, at a cost."
  type        = number
  default     = 0
}

variable "ingress_max_instances" {
  description = "Upper bound on ingress instances."
  type        = number
  default     = 20
}

variable "worker_concurrency" {
  description = "Jobs one worker instance runs at once (THREADS matches it)."
  type        = number
  default     = 4
}

variable "worker_max_instances" {
  description = "Upper bound on worker instances: at most this x worker_concurrency jobs run at once."
  type        = number
  default     = 25
}

# --- Kiln settings (each maps to one KILN_* variable; defaults follow kiln.settings) --------

variable "log_level" {
  description = "KILN_LOG_LEVEL."
  type        = string
  default     = "INFO"
}

variable "tracing" {
  description = "KILN_TRACING: cloud (spans to Cloud Trace) or off; docs/tracing.md."
  type        = string
  default     = "cloud"
  validation {
    condition     = contains(["cloud", "off"], var.tracing)
    error_message = "tracing must be cloud or off on the cloud."
  }
}

variable "trace_sample" {
  description = "KILN_TRACE_SAMPLE: the ratio of traces kept, decided by trace id (the same on every function)."
  type        = number
  default     = 0.1
  validation {
    condition     = var.trace_sample >= 0 && var.trace_sample <= 1
    error_message = "trace_sample is a ratio from 0 to 1."
  }
}

variable "max_attempts" {
  description = "KILN_MAX_ATTEMPTS: worker attempts before a job fails."
  type        = number
  default     = 3

  validation {
    condition     = var.max_attempts >= 1
    error_message = "max_attempts must be at least 1."
  }
}

variable "lease_seconds" {
  description = "KILN_LEASE_SECONDS: how long a claim holds a job without a heartbeat."
  type        = number
  default     = 90
}

variable "sweeper_timeout_seconds" {
  description = "The sweeper function's timeout, also passed as KILN_SWEEPER_TIMEOUT_SECONDS: a Telegram redelivery pass ends before it (docs/telegram.md)."
  type        = number
  default     = 120
  validation {
    condition     = var.sweeper_timeout_seconds >= 60 && var.sweeper_timeout_seconds <= 1800 && floor(var.sweeper_timeout_seconds) == var.sweeper_timeout_seconds
    error_message = "sweeper_timeout_seconds must be a whole number from 60 to 1800 (Cloud Scheduler's longest attempt)."
  }
}

variable "worker_budget_seconds" {
  description = "KILN_WORKER_BUDGET_SECONDS: when a worker hands a running job on (below the 540 s timeout)."
  type        = number
  default     = 480

  validation {
    condition     = var.worker_budget_seconds > 0 && var.worker_budget_seconds <= 500
    error_message = "worker_budget_seconds must leave room before the worker's 540 s timeout (<= 500)."
  }
}

variable "job_max_age_seconds" {
  description = "KILN_JOB_MAX_AGE_SECONDS: the sweeper fails jobs older than this."
  type        = number
  default     = 10800
}

variable "pending_republish_seconds" {
  description = "KILN_PENDING_REPUBLISH_SECONDS: a pending job untouched this long is re-published."
  type        = number
  default     = 60
}

variable "progress_interval_seconds" {
  description = "KILN_PROGRESS_INTERVAL_SECONDS: at most one progress write per job per interval."
  type        = number
  default     = 1
}

variable "retry_backoff_seconds" {
  description = "KILN_RETRY_BACKOFF_SECONDS: delay before a failed attempt is retried."
  type        = number
  default     = 10
}

variable "link_template" {
  description = "KILN_LINK_TEMPLATE: the deep link a completion push opens; must contain {jobId}."
  type        = string
  default     = "/jobs/{jobId}"
}

variable "max_body_bytes" {
  description = "KILN_MAX_BODY_BYTES: largest request body the ingress accepts."
  type        = number
  default     = 65536
}

variable "image_provider" {
  description = "KILN_IMAGE_PROVIDER: generator for kind=image (\"offline\" smoke-tests a deployment without keys)."
  type        = string
  default     = "gemini"
}

variable "model_provider" {
  description = "KILN_MODEL_PROVIDER: generator for kind=model (GLB)."
  type        = string
  default     = "meshy"
}

variable "offline_image_seconds" {
  description = "KILN_OFFLINE_IMAGE_SECONDS: simulated duration of the offline image generator."
  type        = number
  default     = 3
}

variable "offline_model_seconds" {
  description = "KILN_OFFLINE_MODEL_SECONDS: simulated duration of the offline model generator."
  type        = number
  default     = 8
}

variable "poll_first_seconds" {
  description = "KILN_POLL_FIRST_SECONDS: first check of a remote task after submit (0 = the provider's own cadence)."
  type        = number
  default     = 0
}

variable "poll_max_seconds" {
  description = "KILN_POLL_MAX_SECONDS: longest gap between checks of a remote task (0 = the provider's own cadence)."
  type        = number
  default     = 0
}

variable "telegram_api_base" {
  description = "KILN_TELEGRAM_API_BASE."
  type        = string
  default     = "https://api.telegram.org"
}

variable "telegram_default_kind" {
  description = "KILN_TELEGRAM_DEFAULT_KIND: what a plain Telegram message generates (image or model)."
  type        = string
  default     = "image"
}

variable "meshy_base_url" {
  description = "KILN_MESHY_BASE_URL."
  type        = string
  default     = "https://api.meshy.ai"
}

variable "meshy_model" {
  description = "KILN_MESHY_MODEL: the ai_model of Meshy's text- and image-to-3D tasks (pinned; Meshy's \"latest\" moves). Meshy retires models: see docs/providers.md."
  type        = string
  default     = "meshy-7.1"
}

variable "meshy_texture_model" {
  description = "KILN_MESHY_TEXTURE_MODEL: the texture_model that paints a textured Meshy model."
  type        = string
  default     = "meshy-7"
}

variable "gemini_model" {
  description = "KILN_GEMINI_MODEL."
  type        = string
  default     = "gemini-2.5-flash-image"
}

variable "public_url" {
  description = "KILN_PUBLIC_URL: the ingress's public base URL, for provider callbacks (default: the ingress function's URL)."
  type        = string
  default     = ""
}

variable "taskserver_url" {
  description = "KILN_TASKSERVER_URL: base URL of a create/poll/fetch task server, if one is used."
  type        = string
  default     = ""
}

variable "allowed_fetch_hosts" {
  description = "KILN_ALLOWED_FETCH_HOSTS: hosts the worker may download inputs/results from (empty: the code's default)."
  type        = string
  default     = ""
}

variable "max_artifact_bytes" {
  description = "KILN_MAX_ARTIFACT_BYTES: largest result the worker stores."
  type        = number
  default     = 2147483648
}

variable "tasks_max_dispatches_per_second" {
  description = "Rate cap of the kiln-checks Cloud Tasks queue (scheduled checks published per second; at most 500)."
  type        = number
  default     = 100
}


variable "plans" {
  description = "KILN_PLANS: the plan table, 'name:daily=N,running=N,priority=N;...'."
  type        = string
  default     = "free:daily=50,running=2,priority=0;pro:daily=2000,running=8,priority=10"
}

variable "default_plan" {
  description = "KILN_DEFAULT_PLAN: the plan of an app user without a plan claim."
  type        = string
  default     = "free"
}

variable "telegram_plan" {
  description = "KILN_TELEGRAM_PLAN: the plan of every Telegram chat."
  type        = string
  default     = "free"
}

variable "plan_grants" {
  description = "KILN_PLAN_GRANTS: an operator's grants, 'uid=plan,...'."
  type        = string
  default     = ""
}

variable "max_waiting" {
  description = "KILN_MAX_WAITING: jobs waiting to start across Kiln before new ones get 503."
  type        = number
  default     = 10000
}

variable "queue_ttl_seconds" {
  description = "KILN_QUEUE_TTL_SECONDS: a job waiting longer to start fails 'expired'."
  type        = number
  default     = 3600
}

variable "queue_ageing_seconds" {
  description = "KILN_QUEUE_AGEING_SECONDS: a waiting job gains one priority point per this."
  type        = number
  default     = 30
}

variable "provider_capacity" {
  description = "KILN_PROVIDER_CAPACITY: tasks at once per provider account, 'K' or 'name=K,...'."
  type        = string
  default     = "8"
}

variable "provider_backoff_seconds" {
  description = "KILN_PROVIDER_BACKOFF_SECONDS: how long a provider 429 halves its window."
  type        = number
  default     = 60
}
