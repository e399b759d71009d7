# Zips one packaged function and uploads it under a name that carries the archive's hash.
#
# archive_file zeroes timestamps and walks files in sorted order, and output_file_mode
# pins permissions, so the hash depends only on file names and contents. A source change
# gives a new object name, which changes the function's build source and redeploys it; an
# unchanged source plans no change at all.

data "archive_file" "source" {
  type             = "zip"
  source_dir       = var.source_dir
  output_path      = "${var.output_dir}/${var.name}.zip"
  output_file_mode = "0644"
}

resource "google_storage_bucket_object" "source" {
  name   = "${var.name}/${data.archive_file.source.output_md5}.zip"
  bucket = var.bucket
  source = data.archive_file.source.output_path

  # Upload the new archive before the old one goes, so the function never points at
  # a deleted object.
  lifecycle {
    create_before_destroy = true
  }
}
