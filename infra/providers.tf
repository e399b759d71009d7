# Firebase APIs (rules, storage link) reject calls without a quota project when the caller
# uses user credentials, so every request is billed to the target project explicitly.
provider "google" {
  project               = var.project_id
  region                = var.region
  user_project_override = true
  billing_project       = var.project_id
}

provider "google-beta" {
  project               = var.project_id
  region                = var.region
  user_project_override = true
  billing_project       = var.project_id
}
