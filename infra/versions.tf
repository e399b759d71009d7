terraform {
  required_version = ">= 1.6"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.50.0"
    }
    # Firebase Storage bucket link and the Pub/Sub service identity are beta-only.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 6.50.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7.0"
    }
  }

  # Partial configuration: the state bucket is passed at init time,
  # `terraform init -backend-config=bucket=<state bucket>` (see docs/deploy.md).
  backend "gcs" {
    prefix = "kiln"
  }
}
