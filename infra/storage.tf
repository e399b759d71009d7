# Results: generations/{uid}/{jobId}/result.png|result.glb (+ thumb.png).
resource "google_storage_bucket" "results" {
  name                        = local.bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced" # clients read through Firebase download URLs or rules
  labels                      = local.labels

  # Web clients fetch results straight from Storage.
  cors {
    origin          = var.cors_origins
    method          = ["GET", "HEAD"]
    response_header = ["Content-Type", "Content-Length", "Content-Disposition", "ETag"]
    max_age_seconds = 3600
  }

  # Old results go; their job documents expire through the Firestore TTL policy.
  lifecycle_rule {
    condition {
      age            = var.result_retention_days
      matches_prefix = ["generations/"]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

# Makes the bucket a Firebase Storage bucket: client SDKs, download URLs and storage.rules.
resource "google_firebase_storage_bucket" "results" {
  provider  = google-beta
  bucket_id = google_storage_bucket.results.name
}

# Function source archives, one object per content hash (see modules/function_source).
resource "google_storage_bucket" "sources" {
  name                        = "${var.project_id}-kiln-sources"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels

  depends_on = [google_project_service.apis]
}
