variable "name" {
  description = "Function name: the folder functions/<name> and build/functions/<name>."
  type        = string
}

variable "source_dir" {
  description = "The packaged source tree (scripts/package_functions.py output)."
  type        = string
}

variable "output_dir" {
  description = "Where the zip archive is written."
  type        = string
}

variable "bucket" {
  description = "Bucket holding the source archives."
  type        = string
}
