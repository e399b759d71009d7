# Terraform creates the secrets only. Their values are added by an operator with
# `gcloud secrets versions add` (docs/deploy.md), so no secret value is ever in tfstate.
# Functions mount the latest version as an environment variable at instance start.

resource "google_secret_manager_secret" "telegram_bot_token" {
  secret_id = "kiln-telegram-bot-token"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "telegram_webhook_secret" {
  secret_id = "kiln-telegram-webhook-secret"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "meshy_api_key" {
  secret_id = "kiln-meshy-api-key"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "gemini_api_key" {
  secret_id = "kiln-gemini-api-key"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "taskserver_api_key" {
  secret_id = "kiln-taskserver-api-key"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# Verifies the task server's Standard Webhooks callbacks (a whsec_ secret; the server
# signs with the same one). The worker reads it too: it asks for callbacks only when set.
resource "google_secret_manager_secret" "taskserver_webhook_secret" {
  secret_id = "kiln-taskserver-webhook-secret"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# The ?token= of the webhook URL configured in Meshy's dashboard (docs/providers.md).
resource "google_secret_manager_secret" "meshy_webhook_secret" {
  secret_id = "kiln-meshy-webhook-secret"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}
