output "bucket" {
  description = "Bucket of the uploaded archive."
  value       = google_storage_bucket_object.source.bucket
}

output "object" {
  description = "Object name of the uploaded archive (changes with the source)."
  value       = google_storage_bucket_object.source.name
}

output "md5" {
  description = "MD5 of the archive."
  value       = data.archive_file.source.output_md5
}
