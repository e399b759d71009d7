resource "google_cloud_scheduler_job" "sweeper" {
  name             = "kiln-sweeper"
  description      = "Runs the Kiln sweeper every minute."
  region           = var.region
  schedule         = "* * * * *"
  time_zone        = "Etc/UTC"
  # As long as the function may run (Cloud Scheduler allows HTTP targets up to 30 minutes).
  attempt_deadline = "${var.sweeper_timeout_seconds}s"

  # The next run is a minute away; retrying a missed sweep would only overlap it.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.sweeper.service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.sweeper.email
      audience              = google_cloudfunctions2_function.sweeper.service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.sweeper_invoked_by_scheduler]
}
