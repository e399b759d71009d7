# Kiln on Google Cloud: ingress (HTTP) -> Firestore + Pub/Sub -> worker (push) -> Storage,
# FCM, Telegram; a sweeper on Cloud Scheduler. docs/deploy.md walks through a deployment.

locals {
  bucket_name = var.bucket_name != "" ? var.bucket_name : "${var.project_id}-kiln-results"

  # scripts/package_functions.py writes one source tree per function here (`make package`).
  build_dir   = "${path.module}/../build/functions"
  archive_dir = "${path.module}/../build/archives"

  labels = merge({ app = "kiln" }, var.labels)
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com", # function container images
    "cloudbuild.googleapis.com",       # builds function sources
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtasks.googleapis.com", # scheduled checks of waiting jobs
    "cloudtrace.googleapis.com", # spans of every hop of a job (KILN_TRACING=cloud)
    "fcm.googleapis.com",
    "firebase.googleapis.com",
    "firebaserules.googleapis.com",
    "firebasestorage.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])

  service = each.key
  # Other workloads in the project may use the same APIs.
  disable_on_destroy = false
}
