# The object-store zones of the truth path, one bucket each:
# private (all four public-access blocks, owner-enforced ownership, no ACLs),
# encrypted at rest with a dedicated KMS key, versioned; raw and audit are
# also write-once (object lock, COMPLIANCE mode) so neither an acquisition
# nor a ledger tile can be rewritten in place.

locals {
  zones        = toset(["raw", "work", "quarantine", "processed", "catalog", "published", "audit"])
  locked_zones = toset(["raw", "audit"])
}

resource "aws_kms_key" "zones" {
  description             = "KFM ${var.environment} zone buckets"
  enable_key_rotation     = true
  deletion_window_in_days = 30
}

resource "aws_s3_bucket" "zone" {
  for_each            = local.zones
  bucket              = "${var.name_prefix}-${var.environment}-${each.key}"
  object_lock_enabled = contains(local.locked_zones, each.key)
  tags = {
    "kfm.io/zone" = each.key
    "kfm.io/env"  = var.environment
  }
}

resource "aws_s3_bucket_public_access_block" "zone" {
  for_each                = aws_s3_bucket.zone
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "zone" {
  for_each = aws_s3_bucket.zone
  bucket   = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "zone" {
  for_each = aws_s3_bucket.zone
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.zones.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "zone" {
  for_each = aws_s3_bucket.zone
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "locked" {
  for_each = local.locked_zones
  bucket   = aws_s3_bucket.zone[each.key].id
  rule {
    default_retention {
      mode = "COMPLIANCE"
      days = var.retention_days
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "scratch" {
  for_each = toset(["work", "quarantine"])
  bucket   = aws_s3_bucket.zone[each.key].id
  rule {
    id     = "expire-noncurrent"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_days
    }
  }
}

# TLS only: a request over plain HTTP is denied for every zone.
data "aws_iam_policy_document" "tls_only" {
  for_each = aws_s3_bucket.zone
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  for_each = aws_s3_bucket.zone
  bucket   = each.value.id
  policy   = data.aws_iam_policy_document.tls_only[each.key].json
}
