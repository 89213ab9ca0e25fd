//! Terraform/OpenTofu: no public bucket, encryption at rest, no literal
//! secrets, across AWS, GCP, Azure and MinIO resource types.
//!
//! Files are parsed with hcl-rs's editor layer (`hcl::edit`), which keeps
//! byte spans, so every finding names its line. A module is a directory:
//! a bucket and the resources that make it private or encrypted (an S3
//! public-access block, an SSE configuration) are matched across its files
//! by reference (`aws_s3_bucket.NAME`). What the gate demands per provider:
//!
//! - AWS S3: no public ACL (`public-read`, `public-read-write`,
//!   `authenticated-read`), no bucket policy allowing principal `*`, a
//!   public-access block with all four settings `true`, and server-side
//!   encryption (inline or an `aws_s3_bucket_server_side_encryption_configuration`).
//! - GCS: `public_access_prevention = "enforced"`, no IAM grant or ACL to
//!   `allUsers`/`allAuthenticatedUsers`. GCS always encrypts at rest.
//! - Azure: `allow_nested_items_to_be_public = false` on storage accounts,
//!   no container with `container_access_type` `blob` or `container`.
//!   Azure Storage always encrypts at rest.
//! - MinIO: no public `acl`, no policy allowing principal `*`, and a
//!   `minio_s3_bucket_server_side_encryption` for every bucket.

use std::collections::BTreeMap;

use hcl::edit::Span;
use hcl::edit::expr::Expression;
use hcl::edit::structure::{Block, Body};

use crate::finding::Finding;
use crate::scan::ScanError;

/// A parsed `.tf` file.
pub struct TfFile {
    pub file: String,
    pub text: String,
    pub body: Body,
}

/// Parses a file; a syntax error stops the run (exit 2) with its place.
pub fn parse(file: &str, text: &str) -> Result<TfFile, ScanError> {
    let body = hcl::edit::parser::parse_body(text).map_err(|e| ScanError::Hcl {
        path: file.to_owned(),
        line: e.location().line(),
        column: e.location().column(),
        reason: e.message().to_owned(),
    })?;
    Ok(TfFile {
        file: file.to_owned(),
        text: text.to_owned(),
        body,
    })
}

struct Res<'a> {
    f: &'a TfFile,
    ty: String,
    name: String,
    block: &'a Block,
}

impl Res<'_> {
    fn addr(&self) -> String {
        format!("{}.{}", self.ty, self.name)
    }
    fn attr(&self, key: &str) -> Option<&Expression> {
        self.block.body.get_attribute(key).map(|a| &a.value)
    }
    fn literal(&self, key: &str) -> Option<String> {
        self.attr(key).and_then(literal)
    }
    fn bool_attr(&self, key: &str) -> Option<bool> {
        match self.attr(key) {
            Some(Expression::Bool(b)) => Some(*b.value()),
            _ => None,
        }
    }
    fn refers_to(&self, key: &str, target: &Res<'_>) -> bool {
        self.attr(key).is_some_and(|e| {
            let s = e.to_string();
            let addr = target.addr();
            s.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '-'))
                .any(|tok| tok == addr || tok.starts_with(&format!("{addr}.")))
        })
    }
    /// Whether this resource configures `target` through its `bucket`
    /// attribute, directly or as `for_each = aws_s3_bucket.X` with
    /// `bucket = each.value.…`.
    fn covers(&self, target: &Res<'_>) -> bool {
        self.refers_to("bucket", target)
            || (self.refers_to("for_each", target)
                && self
                    .attr("bucket")
                    .is_some_and(|e| e.to_string().contains("each.")))
    }
    fn finding(&self, key: Option<&str>, rule: &str, message: String) -> Finding {
        let span = key
            .and_then(|k| self.block.body.get_attribute(k))
            .and_then(|a| a.span())
            .or_else(|| self.block.span());
        finding_at(self.f, span.map_or(0, |s| s.start), rule, message)
    }
}

fn finding_at(f: &TfFile, offset: usize, rule: &str, message: String) -> Finding {
    let before = &f.text[..offset.min(f.text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Finding {
        file: f.file.clone(),
        line: line as u32,
        column: col as u32,
        rule: rule.to_owned(),
        message,
        snippet: f.text.lines().nth(line - 1).unwrap_or("").to_owned(),
    }
}

/// A string that is a literal (no interpolation, no reference).
fn literal(e: &Expression) -> Option<String> {
    match e {
        Expression::String(s) => Some(s.value().to_string()),
        _ => None,
    }
}

fn label(b: &Block, i: usize) -> String {
    b.labels
        .get(i)
        .map(|l| l.as_str().to_owned())
        .unwrap_or_default()
}

/// Attribute names that hold a credential.
fn sensitive_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "secret_key",
        "access_key",
        "token",
        "api_key",
        "private_key",
        "client_secret",
        "connection_string",
        "account_key",
        "sas_token",
    ]
    .iter()
    .any(|s| k == *s || k.ends_with(&format!("_{s}")))
}

/// Text of a policy that allows principal `*` (IAM JSON in a heredoc,
/// `jsonencode({...})` or a string).
fn public_policy_text(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let allows = compact.contains("\"Allow\"") || !compact.contains("Deny");
    allows
        && (compact.contains("Principal\"=\"*\"")
            || compact.contains("\"Principal\":\"*\"")
            || compact.contains("Principal=\"*\"")
            || compact.contains("AWS\"=\"*\"")
            || compact.contains("\"AWS\":\"*\"")
            || compact.contains("AWS=\"*\"")
            || compact.contains("AWS\"=[\"*\"]")
            || compact.contains("\"AWS\":[\"*\"]")
            || compact.contains("AWS=[\"*\"]"))
}

/// Every rule over one module (the `.tf` files of one directory).
pub fn module_findings(files: &[TfFile]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut res: Vec<Res<'_>> = Vec::new();
    let mut data: Vec<Res<'_>> = Vec::new();
    for f in files {
        for b in f.body.blocks() {
            match b.ident.as_str() {
                "resource" => res.push(Res {
                    f,
                    ty: label(b, 0),
                    name: label(b, 1),
                    block: b,
                }),
                "data" => data.push(Res {
                    f,
                    ty: label(b, 0),
                    name: label(b, 1),
                    block: b,
                }),
                "variable" => {
                    let name = label(b, 0);
                    if sensitive_key(&name)
                        && let Some(a) = b.body.get_attribute("default")
                        && literal(&a.value).is_some_and(|v| !v.is_empty())
                    {
                        out.push(finding_at(
                            f,
                            a.span().map_or(0, |s| s.start),
                            "KFM-TF-003",
                            format!("variable {name} has a literal default"),
                        ));
                    }
                }
                _ => {}
            }
            literal_secrets(
                f,
                &b.body,
                &format!(
                    "{} {}",
                    b.ident.as_str(),
                    b.labels
                        .iter()
                        .map(|l| l.as_str())
                        .collect::<Vec<_>>()
                        .join(".")
                ),
                &mut out,
            );
        }
    }
    let res = &res;
    let of = |ty: &'static str| res.iter().filter(move |r| r.ty == ty);
    // Policy documents that allow principal "*".
    let public_docs: Vec<String> = data
        .iter()
        .filter(|d| d.ty == "aws_iam_policy_document")
        .filter(|d| {
            d.block
                .body
                .blocks()
                .filter(|s| s.ident.as_str() == "statement")
                .any(|s| {
                    let allow = s
                        .body
                        .get_attribute("effect")
                        .and_then(|a| literal(&a.value))
                        .is_none_or(|e| e == "Allow");
                    allow
                        && s.body
                            .blocks()
                            .filter(|p| p.ident.as_str() == "principals")
                            .any(|p| {
                                p.body
                                    .get_attribute("identifiers")
                                    .is_some_and(|a| a.value.to_string().contains("\"*\""))
                            })
                })
        })
        .map(|d| format!("data.aws_iam_policy_document.{}", d.name))
        .collect();

    // AWS S3.
    for b in of("aws_s3_bucket") {
        if let Some(acl) = b.literal("acl")
            && matches!(
                acl.as_str(),
                "public-read" | "public-read-write" | "authenticated-read"
            )
        {
            out.push(b.finding(
                Some("acl"),
                "KFM-TF-001",
                format!("{} has ACL {acl}", b.addr()),
            ));
        }
        let pabs: Vec<&Res<'_>> = of("aws_s3_bucket_public_access_block")
            .filter(|p| p.covers(b))
            .collect();
        if pabs.is_empty() {
            out.push(b.finding(None, "KFM-TF-001", format!(
                "{} has no aws_s3_bucket_public_access_block: nothing stops a later public ACL or policy",
                b.addr()
            )));
        }
        let inline_sse = b
            .block
            .body
            .blocks()
            .any(|x| x.ident.as_str() == "server_side_encryption_configuration");
        if !inline_sse
            && !of("aws_s3_bucket_server_side_encryption_configuration").any(|s| s.covers(b))
        {
            out.push(b.finding(
                None,
                "KFM-TF-002",
                format!("{} has no server-side encryption configuration", b.addr()),
            ));
        }
    }
    for p in of("aws_s3_bucket_public_access_block") {
        for k in [
            "block_public_acls",
            "block_public_policy",
            "ignore_public_acls",
            "restrict_public_buckets",
        ] {
            if p.bool_attr(k) != Some(true) {
                out.push(p.finding(
                    Some(k),
                    "KFM-TF-001",
                    format!("{} does not set {k} = true", p.addr()),
                ));
            }
        }
    }
    for a in of("aws_s3_bucket_acl") {
        if let Some(acl) = a.literal("acl")
            && matches!(
                acl.as_str(),
                "public-read" | "public-read-write" | "authenticated-read"
            )
        {
            out.push(a.finding(
                Some("acl"),
                "KFM-TF-001",
                format!("{} grants {acl}", a.addr()),
            ));
        }
    }
    for p in of("aws_s3_bucket_policy").chain(of("minio_s3_bucket_policy")) {
        if let Some(e) = p.attr("policy") {
            let text = e.to_string();
            if public_policy_text(&text) || public_docs.iter().any(|d| text.contains(d.as_str())) {
                out.push(p.finding(
                    Some("policy"),
                    "KFM-TF-001",
                    format!("{} allows principal \"*\"", p.addr()),
                ));
            }
        }
    }
    // GCS.
    for b in of("google_storage_bucket") {
        if b.literal("public_access_prevention").as_deref() != Some("enforced") {
            out.push(b.finding(
                Some("public_access_prevention"),
                "KFM-TF-001",
                format!(
                    "{} does not set public_access_prevention = \"enforced\"",
                    b.addr()
                ),
            ));
        }
    }
    for r in res.iter().filter(|r| {
        r.ty.starts_with("google_storage_bucket_iam_")
            || r.ty == "google_storage_bucket_acl"
            || r.ty == "google_storage_default_object_acl"
            || r.ty == "google_storage_object_acl"
    }) {
        let body = r.block.body.to_string();
        if body.contains("allUsers")
            || body.contains("allAuthenticatedUsers")
            || body.contains("publicRead")
        {
            out.push(r.finding(
                None,
                "KFM-TF-001",
                format!("{} grants access to the public", r.addr()),
            ));
        }
    }
    // Azure.
    for a in of("azurerm_storage_account") {
        if a.bool_attr("allow_nested_items_to_be_public") != Some(false) {
            out.push(a.finding(Some("allow_nested_items_to_be_public"), "KFM-TF-001", format!(
                "{} does not set allow_nested_items_to_be_public = false (the provider's default allows public containers)",
                a.addr()
            )));
        }
    }
    for c in of("azurerm_storage_container") {
        if let Some(t) = c.literal("container_access_type")
            && t != "private"
        {
            out.push(c.finding(
                Some("container_access_type"),
                "KFM-TF-001",
                format!("{} has container_access_type = \"{t}\"", c.addr()),
            ));
        }
    }
    // MinIO.
    for b in of("minio_s3_bucket") {
        if let Some(acl) = b.literal("acl")
            && acl != "private"
        {
            out.push(b.finding(
                Some("acl"),
                "KFM-TF-001",
                format!("{} has acl {acl}", b.addr()),
            ));
        }
        if !of("minio_s3_bucket_server_side_encryption").any(|s| s.covers(b)) {
            out.push(b.finding(
                None,
                "KFM-TF-002",
                format!("{} has no minio_s3_bucket_server_side_encryption", b.addr()),
            ));
        }
    }
    out
}

fn literal_secrets(f: &TfFile, body: &Body, ctx: &str, out: &mut Vec<Finding>) {
    for a in body.attributes() {
        if sensitive_key(a.key.as_str()) && literal(&a.value).is_some_and(|v| !v.is_empty()) {
            out.push(finding_at(
                f,
                a.span().map_or(0, |s| s.start),
                "KFM-TF-003",
                format!("{ctx}: {} is a literal string", a.key.as_str()),
            ));
        }
    }
    for b in body.blocks() {
        if b.ident.as_str() != "variable" {
            literal_secrets(f, &b.body, ctx, out);
        }
    }
}

/// Groups files by directory (a module), in a stable order.
pub fn modules(files: Vec<TfFile>) -> BTreeMap<String, Vec<TfFile>> {
    let mut m: BTreeMap<String, Vec<TfFile>> = BTreeMap::new();
    for f in files {
        let dir = f.file.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        m.entry(dir).or_default().push(f);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<(String, u32)> {
        let f = parse("m/main.tf", text).unwrap();
        let mut v: Vec<_> = module_findings(&[f])
            .into_iter()
            .map(|f| (f.rule, f.line))
            .collect();
        v.sort();
        v
    }

    const PRIVATE_S3: &str = r#"
resource "aws_s3_bucket" "raw" {
  bucket = "kfm-raw"
}
resource "aws_s3_bucket_public_access_block" "raw" {
  bucket                  = aws_s3_bucket.raw.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}
resource "aws_s3_bucket_server_side_encryption_configuration" "raw" {
  bucket = aws_s3_bucket.raw.id
  rule {
    apply_server_side_encryption_by_default { sse_algorithm = "aws:kms" }
  }
}
"#;

    #[test]
    fn aws_private_encrypted_is_clean_and_each_weakening_is_found() {
        assert_eq!(run(PRIVATE_S3), vec![]);
        let weak = PRIVATE_S3.replace(
            "restrict_public_buckets = true",
            "restrict_public_buckets = false",
        );
        assert_eq!(run(&weak), vec![("KFM-TF-001".into(), 10)]);
        let no_sse = PRIVATE_S3.replace(
            "aws_s3_bucket.raw.id\n  rule",
            "aws_s3_bucket.other.id\n  rule",
        );
        assert_eq!(run(&no_sse), vec![("KFM-TF-002".into(), 2)]);
        let acl = format!(
            "{PRIVATE_S3}resource \"aws_s3_bucket_acl\" \"a\" {{\n  bucket = aws_s3_bucket.raw.id\n  acl = \"public-read\"\n}}\n"
        );
        assert_eq!(run(&acl), vec![("KFM-TF-001".into(), 20)]);
        let policy = format!(
            "{PRIVATE_S3}resource \"aws_s3_bucket_policy\" \"p\" {{\n  bucket = aws_s3_bucket.raw.id\n  policy = jsonencode({{\n    Statement = [{{ Effect = \"Allow\", Principal = \"*\", Action = \"s3:GetObject\" }}]\n  }})\n}}\n"
        );
        assert_eq!(run(&policy), vec![("KFM-TF-001".into(), 20)]);
        let doc = format!(
            "{PRIVATE_S3}data \"aws_iam_policy_document\" \"pub\" {{\n  statement {{\n    principals {{\n      type = \"*\"\n      identifiers = [\"*\"]\n    }}\n  }}\n}}\nresource \"aws_s3_bucket_policy\" \"p\" {{\n  bucket = aws_s3_bucket.raw.id\n  policy = data.aws_iam_policy_document.pub.json\n}}\n"
        );
        assert_eq!(run(&doc), vec![("KFM-TF-001".into(), 28)]);
    }

    #[test]
    fn other_clouds() {
        assert_eq!(
            run(
                "resource \"google_storage_bucket\" \"b\" {\n  name = \"x\"\n}\nresource \"google_storage_bucket_iam_member\" \"m\" {\n  bucket = google_storage_bucket.b.name\n  member = \"allUsers\"\n  role = \"roles/storage.objectViewer\"\n}\n"
            ),
            vec![("KFM-TF-001".into(), 1), ("KFM-TF-001".into(), 4)]
        );
        assert_eq!(
            run(
                "resource \"google_storage_bucket\" \"b\" {\n  public_access_prevention = \"enforced\"\n}\n"
            ),
            vec![]
        );
        assert_eq!(
            run(
                "resource \"azurerm_storage_account\" \"a\" {\n  name = \"x\"\n}\nresource \"azurerm_storage_container\" \"c\" {\n  container_access_type = \"blob\"\n}\n"
            ),
            vec![("KFM-TF-001".into(), 1), ("KFM-TF-001".into(), 5)]
        );
        assert_eq!(
            run(
                "resource \"azurerm_storage_account\" \"a\" {\n  allow_nested_items_to_be_public = false\n}\n"
            ),
            vec![]
        );
        assert_eq!(
            run("resource \"minio_s3_bucket\" \"b\" {\n  bucket = \"x\"\n  acl = \"public\"\n}\n"),
            vec![("KFM-TF-001".into(), 3), ("KFM-TF-002".into(), 1)]
        );
        assert_eq!(
            run(
                "resource \"minio_s3_bucket\" \"b\" {\n  bucket = \"x\"\n}\nresource \"minio_s3_bucket_server_side_encryption\" \"e\" {\n  bucket = minio_s3_bucket.b.bucket\n  encryption_type = \"aws:kms\"\n  kms_key_id = \"k\"\n}\n"
            ),
            vec![]
        );
    }

    #[test]
    fn literal_secrets_but_not_references() {
        assert_eq!(
            run(
                "provider \"aws\" {\n  access_key = \"AKIAEXAMPLE\"\n  secret_key = var.secret_key\n}\nvariable \"db_password\" {\n  default = \"hunter2\"\n  sensitive = true\n}\nvariable \"token\" {\n  sensitive = true\n}\nresource \"aws_db_instance\" \"d\" {\n  password = \"${var.db_password}\"\n  master_password = \"literal\"\n}\n"
            ),
            vec![
                ("KFM-TF-003".into(), 2),
                ("KFM-TF-003".into(), 6),
                ("KFM-TF-003".into(), 14)
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_place() {
        let e = parse("bad.tf", "resource \"a\" \"b\" {\n  x = \n}\n")
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("bad.tf:"), "{e}");
    }
}
