resource "google_firestore_database" "default" {
  name                    = "(default)"
  location_id             = var.firestore_location
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "ABANDON"
  # Reads of any minute of the last 7 days (a bad deploy that wrote wrong job states can be
  # read back and repaired); billed as the storage of the versions kept.
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"

  depends_on = [google_project_service.apis]
}

# A daily backup kept 14 days: a whole database to restore into a new one (docs/deploy.md,
# "Rolling back").
resource "google_firestore_backup_schedule" "daily" {
  database  = google_firestore_database.default.name
  retention = "1209600s"

  daily_recurrence {}
}

# --- composite indexes on jobs (the firestore.indexes.json equivalent) ---------------------

# A user's history, newest first (app list, GET /v1/jobs).
resource "google_firestore_index" "jobs_uid_created_desc" {
  database   = google_firestore_database.default.name
  collection = "jobs"

  fields {
    field_path = "uid"
    order      = "ASCENDING"
  }
  fields {
    field_path = "createdAt"
    order      = "DESCENDING"
  }
}

# The sweeper: jobs in a status not touched since a cutoff.
resource "google_firestore_index" "jobs_status_updated" {
  database   = google_firestore_database.default.name
  collection = "jobs"

  fields {
    field_path = "status"
    order      = "ASCENDING"
  }
  fields {
    field_path = "updatedAt"
    order      = "ASCENDING"
  }
}

# A user's (or chat's) jobs in some statuses, e.g. how many are still running.
resource "google_firestore_index" "jobs_uid_status" {
  database   = google_firestore_database.default.name
  collection = "jobs"

  fields {
    field_path = "uid"
    order      = "ASCENDING"
  }
  fields {
    field_path = "status"
    order      = "ASCENDING"
  }
}

# Batches: how many of a batch's jobs have ended (a count aggregation at each job's end).
resource "google_firestore_index" "jobs_batch_status" {
  database   = google_firestore_database.default.name
  collection = "jobs"

  fields {
    field_path = "batchId"
    order      = "ASCENDING"
  }
  fields {
    field_path = "status"
    order      = "ASCENDING"
  }
}

# Telegram chats (uid "telegram:<chatId>"): jobs since a time, for the daily quota.
resource "google_firestore_index" "jobs_uid_created_asc" {
  database   = google_firestore_database.default.name
  collection = "jobs"

  fields {
    field_path = "uid"
    order      = "ASCENDING"
  }
  fields {
    field_path = "createdAt"
    order      = "ASCENDING"
  }
}

# TTL: Firestore deletes a job document (within ~24 h) once its expireAt has passed.
resource "google_firestore_field" "jobs_expire_at" {
  database   = google_firestore_database.default.name
  collection = "jobs"
  field      = "expireAt"

  ttl_config {}

  # Nothing queries expireAt; indexing a timestamp only adds write cost and hot-spotting.
  index_config {}
}

# Batches (kiln.adapters.batches): deleted with their jobs, expireAt as on the jobs.
resource "google_firestore_field" "batches_expire_at" {
  database   = google_firestore_database.default.name
  collection = "batches"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

# Server-only state under a job or a batch (jobs/{id}/private/server: Telegram addresses,
# idempotency keys, provider task ids; batches/{id}/private/ended): a TTL deletion of the
# parent leaves its subcollections, so the "private" collection group has a policy of its
# own, on the same expireAt the parent carries.
resource "google_firestore_field" "private_expire_at" {
  database   = google_firestore_database.default.name
  collection = "private"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

# A job's timeline and its earlier run (private/server: a map of step -> time, one
# check_N per scheduled check): nothing queries them, and indexing every step counts
# against the 40,000 index entries a document may have; long jobs have hundreds.
resource "google_firestore_field" "private_timeline" {
  database   = google_firestore_database.default.name
  collection = "private"
  field      = "timeline"

  index_config {}
}

resource "google_firestore_field" "private_earlier_run" {
  database   = google_firestore_database.default.name
  collection = "private"
  field      = "earlierRun"

  index_config {}
}

# Daily quota tickets (kiln.adapters.firestore_queue): one per admitted job, deleted two
# days after they were taken (a day's quota counts only that day's tickets).
resource "google_firestore_field" "quota_tickets_expire_at" {
  database   = google_firestore_database.default.name
  collection = "quotaTickets"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

# The provider task index (kiln.adapters.firestore.FirestoreTaskIndex): task links and
# callback events seen, server-only (the rules deny clients), deleted 7 days after use.
resource "google_firestore_field" "provider_tasks_expire_at" {
  database   = google_firestore_database.default.name
  collection = "providerTasks"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

resource "google_firestore_field" "provider_events_expire_at" {
  database   = google_firestore_database.default.name
  collection = "providerEvents"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

# A Telegram chat's state (kiln.adapters.firestore_chats: blocked, a group's former ids,
# results waiting for Telegram): deleted once unwritten for as long as jobs are kept.
resource "google_firestore_field" "telegram_chats_expire_at" {
  database   = google_firestore_database.default.name
  collection = "telegramChats"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

# Webhook events, deliveries and attempts (kiln.webhooks): kept 30 days (the retries'
# three, and a month to replay; an event's body holds download links), then deleted.
resource "google_firestore_field" "webhook_events_expire_at" {
  database   = google_firestore_database.default.name
  collection = "webhookEvents"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

resource "google_firestore_field" "webhook_deliveries_expire_at" {
  database   = google_firestore_database.default.name
  collection = "webhookDeliveries"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

resource "google_firestore_field" "webhook_attempts_expire_at" {
  database   = google_firestore_database.default.name
  collection = "webhookAttempts"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

# A push's devices (kiln.adapters.firestore_devices): before sending to a user's device,
# the worker looks for the same FID or token registered by another user since (a phone
# signed in as someone else), across every users/{uid}/devices collection. Single-field
# indexes are per collection by default; a collection-group query needs its own.
resource "google_firestore_field" "devices_fid" {
  database   = google_firestore_database.default.name
  collection = "devices"
  field      = "fid"

  index_config {
    indexes {
      order = "ASCENDING"
    }
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION_GROUP"
    }
  }
}

resource "google_firestore_field" "devices_token" {
  database   = google_firestore_database.default.name
  collection = "devices"
  field      = "token"

  index_config {
    indexes {
      order = "ASCENDING"
    }
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION_GROUP"
    }
  }
}

# Webhook deliveries (kiln.webhooks, docs/webhooks.md): the sweeper's query for pending
# deliveries whose next attempt is overdue (a lost wake-up).
resource "google_firestore_index" "webhook_deliveries_state_next_at" {
  database   = google_firestore_database.default.name
  collection = "webhookDeliveries"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "nextAt"
    order      = "ASCENDING"
  }
}

# `kiln webhooks deliveries --endpoint ID | --event ID`: an endpoint's or an event's newest
# deliveries (FirestoreWebhookStore.deliveries orders by createdAt before its limit).
resource "google_firestore_index" "webhook_deliveries_endpoint_created" {
  database   = google_firestore_database.default.name
  collection = "webhookDeliveries"

  fields {
    field_path = "endpointId"
    order      = "ASCENDING"
  }
  fields {
    field_path = "createdAt"
    order      = "DESCENDING"
  }
}

resource "google_firestore_index" "webhook_deliveries_event_created" {
  database   = google_firestore_database.default.name
  collection = "webhookDeliveries"

  fields {
    field_path = "eventId"
    order      = "ASCENDING"
  }
  fields {
    field_path = "createdAt"
    order      = "DESCENDING"
  }
}

# The sweeper's repair of lost end notifications (FirestoreJobStore.unnotified): ended
# jobs whose jobs/{id}/private/server still says notify.state "claimed". A query across
# every job's "private" collection needs the field's collection-group index; single-field
# indexes are collection-scoped unless declared.
resource "google_firestore_field" "private_notify_state" {
  database   = google_firestore_database.default.name
  collection = "private"
  field      = "notify.state"

  index_config {
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION_GROUP"
    }
  }
}

# --- security rules (the files are owned next to this one) -----------------------------------

resource "google_firebaserules_ruleset" "firestore" {
  source {
    files {
      name    = "firestore.rules"
      content = file("${path.module}/firestore.rules")
    }
  }

  depends_on = [google_firestore_database.default, google_project_service.apis]
}

resource "google_firebaserules_release" "firestore" {
  name         = "cloud.firestore"
  ruleset_name = "projects/${var.project_id}/rulesets/${google_firebaserules_ruleset.firestore.name}"

  lifecycle {
    replace_triggered_by = [google_firebaserules_ruleset.firestore]
  }
}

resource "google_firebaserules_ruleset" "storage" {
  source {
    files {
      name    = "storage.rules"
      content = file("${path.module}/storage.rules")
    }
  }

  depends_on = [google_firebase_storage_bucket.results]
}

resource "google_firebaserules_release" "storage" {
  name         = "firebase.storage/${google_storage_bucket.results.name}"
  ruleset_name = "projects/${var.project_id}/rulesets/${google_firebaserules_ruleset.storage.name}"

  lifecycle {
    replace_triggered_by = [google_firebaserules_ruleset.storage]
  }
}
