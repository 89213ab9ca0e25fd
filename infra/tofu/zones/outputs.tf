output "buckets" {
  description = "Bucket name per zone."
  value       = { for z, b in aws_s3_bucket.zone : z => b.bucket }
}

output "kms_key_arn" {
  description = "The key every zone is encrypted with."
  value       = aws_kms_key.zones.arn
}
