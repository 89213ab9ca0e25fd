variable "environment" {
  description = "dev, stage or prod: part of every bucket name."
  type        = string
  validation {
    condition     = contains(["dev", "stage", "prod"], var.environment)
    error_message = "environment must be dev, stage or prod."
  }
}

variable "name_prefix" {
  description = "Globally unique prefix of the bucket names."
  type        = string
  default     = "kfm"
}

variable "retention_days" {
  description = "Object-lock retention (COMPLIANCE mode) of the raw and audit zones: nobody, root included, can delete or overwrite an object version before it ends."
  type        = number
  default     = 2555
}

variable "noncurrent_days" {
  description = "How long superseded versions of mutable zones (work, quarantine) are kept."
  type        = number
  default     = 90
}
