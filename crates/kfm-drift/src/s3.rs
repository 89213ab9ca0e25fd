//! S3: each zone bucket's versioning, public-access block, default
//! encryption and object lock, read and set through the S3 API's bucket
//! sub-resources (`?versioning`, `?publicAccessBlock`, `?encryption`,
//! `?object-lock`), path-style, signed with SigV4 by AWS's own signer.
//!
//! An answer the S3 API gives for "never configured" (no public-access
//! block, no encryption rule, no lock) is read as the unsafe value it
//! means, so it shows as drift against git rather than as an error.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use futures::StreamExt as _;
use kfm_infra::platform::{Bucket, Platform};
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{DriftError, ENGINE_TIMEOUT, Engine, Grade, Observed, Severity, Want, sources};

/// How to reach the S3 API (credentials already read from the variables
/// the desired state names).
#[derive(Clone)]
pub struct Conn {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Conn {
    // Never the secret, not even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// A signing S3 client for bucket settings.
pub struct Client {
    conn: Conn,
    http: reqwest::Client,
}

/// An S3 answer other than success.
struct Failure {
    status: u16,
    code: String,
    message: String,
}

#[derive(Deserialize, Default)]
struct ErrorXml {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

fn err(what: &str, e: impl std::fmt::Display) -> DriftError {
    DriftError::engine(Engine::S3, what, e)
}

impl Client {
    pub fn new(conn: &Conn) -> Result<Self, DriftError> {
        let http = reqwest::Client::builder()
            .timeout(ENGINE_TIMEOUT)
            .connect_timeout(ENGINE_TIMEOUT)
            .build()
            .map_err(|e| DriftError::Config(format!("s3: cannot build an HTTP client: {e}")))?;
        Ok(Self {
            conn: conn.clone(),
            http,
        })
    }

    fn url(&self, bucket: &str, sub: &str) -> String {
        let base = self.conn.endpoint.trim_end_matches('/');
        if sub.is_empty() {
            format!("{base}/{bucket}")
        } else {
            format!("{base}/{bucket}?{sub}")
        }
    }

    /// Sends one signed request. `Ok(Err(..))` is an S3 error answer; an
    /// `Err` means the server could not be reached at all.
    async fn send(
        &self,
        method: &str,
        bucket: &str,
        sub: &str,
        extra: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Result<String, Failure>, DriftError> {
        let url = self.url(bucket, sub);
        let mut headers: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        if !body.is_empty() {
            let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
            headers.push(("content-md5".into(), md5));
        }
        let host = reqwest::Url::parse(&url)
            .map_err(|e| DriftError::Config(format!("s3: endpoint {}: {e}", self.conn.endpoint)))?;
        let host = match (host.host_str(), host.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => {
                return Err(DriftError::Config(format!(
                    "s3: endpoint {} has no host",
                    self.conn.endpoint
                )));
            }
        };
        headers.push(("host".into(), host));
        let identity = Credentials::new(
            &self.conn.access_key,
            &self.conn.secret_key,
            None,
            None,
            "kfm-drift",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.conn.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| DriftError::Config(format!("s3: signing parameters: {e}")))?
            .into();
        let signable = SignableRequest::new(
            method,
            url.as_str(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| DriftError::Config(format!("s3: cannot sign {method} {url}: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| DriftError::Config(format!("s3: cannot sign {method} {url}: {e}")))?
            .into_parts();
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| DriftError::Config(format!("s3: method {method}: {e}")))?;
        let mut req = self.http.request(m, &url).body(body);
        for (k, v) in &headers {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        for (k, v) in instructions.headers() {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| {
            DriftError::unreachable(Engine::S3, format!("{}: {e}", self.conn.endpoint))
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            DriftError::unreachable(Engine::S3, format!("{}: {e}", self.conn.endpoint))
        })?;
        if status.is_success() {
            return Ok(Ok(text));
        }
        let e: ErrorXml = quick_xml::de::from_str(&text).unwrap_or_default();
        Ok(Err(Failure {
            status: status.as_u16(),
            code: e.code,
            message: e.message,
        }))
    }

    /// GET a sub-resource; `None` when S3 says it was never configured
    /// (`absent_code`).
    async fn get(
        &self,
        bucket: &str,
        sub: &str,
        absent_code: Option<&str>,
    ) -> Result<Option<String>, DriftError> {
        match self.send("GET", bucket, sub, &[], Vec::new()).await? {
            Ok(t) => Ok(Some(t)),
            Err(f) if absent_code.is_some_and(|c| c == f.code) => Ok(None),
            Err(f) => Err(fail(&format!("bucket/{bucket} ?{sub}"), &f)),
        }
    }

    async fn put(
        &self,
        bucket: &str,
        sub: &str,
        extra: &[(&str, String)],
        body: String,
    ) -> Result<(), DriftError> {
        match self
            .send("PUT", bucket, sub, extra, body.into_bytes())
            .await?
        {
            Ok(_) => Ok(()),
            Err(f) => Err(fail(&format!("PUT bucket/{bucket} ?{sub}"), &f)),
        }
    }

    /// Whether the bucket exists (HEAD).
    pub async fn exists(&self, bucket: &str) -> Result<bool, DriftError> {
        match self.send("HEAD", bucket, "", &[], Vec::new()).await? {
            Ok(_) => Ok(true),
            Err(f) if f.status == 404 => Ok(false),
            Err(f) => Err(fail(&format!("bucket/{bucket}"), &f)),
        }
    }

    /// A bucket's settings as the drift report compares them.
    pub async fn settings(&self, bucket: &str) -> Result<Option<Map<String, Value>>, DriftError> {
        if !self.exists(bucket).await? {
            return Ok(None);
        }
        let what = |s: &str| format!("bucket/{bucket} ?{s}");
        let mut m = Map::new();
        let v: VersioningXml = match self.get(bucket, "versioning", None).await? {
            Some(t) => quick_xml::de::from_str(&t).map_err(|e| err(&what("versioning"), e))?,
            None => VersioningXml::default(),
        };
        m.insert(
            "versioning".into(),
            json!(v.status.unwrap_or_else(|| "Unversioned".into())),
        );
        let pab: PabXml = match self
            .get(
                bucket,
                "publicAccessBlock",
                Some("NoSuchPublicAccessBlockConfiguration"),
            )
            .await?
        {
            Some(t) => {
                quick_xml::de::from_str(&t).map_err(|e| err(&what("publicAccessBlock"), e))?
            }
            None => PabXml::default(),
        };
        m.insert(
            "public_access_block".into(),
            json!({
                "block_public_acls": pab.block_public_acls,
                "ignore_public_acls": pab.ignore_public_acls,
                "block_public_policy": pab.block_public_policy,
                "restrict_public_buckets": pab.restrict_public_buckets,
            }),
        );
        let enc = match self
            .get(
                bucket,
                "encryption",
                Some("ServerSideEncryptionConfigurationNotFoundError"),
            )
            .await?
        {
            Some(t) => {
                let x: EncryptionXml =
                    quick_xml::de::from_str(&t).map_err(|e| err(&what("encryption"), e))?;
                x.rule
                    .into_iter()
                    .find_map(|r| r.default.map(|d| d.algorithm))
                    .unwrap_or_else(|| "none".into())
            }
            None => "none".into(),
        };
        m.insert("encryption".into(), json!(enc));
        let lock = match self
            .get(
                bucket,
                "object-lock",
                Some("ObjectLockConfigurationNotFoundError"),
            )
            .await?
        {
            Some(t) => {
                let x: LockXml =
                    quick_xml::de::from_str(&t).map_err(|e| err(&what("object-lock"), e))?;
                match (x.enabled.as_deref(), x.rule.and_then(|r| r.retention)) {
                    (Some("Enabled"), Some(r)) => json!({"mode": r.mode, "days": r.days}),
                    (Some("Enabled"), None) => json!({"mode": null, "days": null}),
                    _ => Value::Null,
                }
            }
            None => Value::Null,
        };
        m.insert("object_lock".into(), lock);
        Ok(Some(m))
    }
}

fn fail(what: &str, f: &Failure) -> DriftError {
    err(
        what,
        format!(
            "HTTP {} {}{}",
            f.status,
            if f.code.is_empty() {
                "(no S3 error code)"
            } else {
                &f.code
            },
            if f.message.is_empty() {
                String::new()
            } else {
                format!(": {}", f.message)
            }
        ),
    )
}

#[derive(Deserialize, Default)]
struct VersioningXml {
    #[serde(rename = "Status")]
    status: Option<String>,
}

#[derive(Deserialize, Serialize, Default)]
struct PabXml {
    #[serde(rename = "BlockPublicAcls", default)]
    block_public_acls: bool,
    #[serde(rename = "IgnorePublicAcls", default)]
    ignore_public_acls: bool,
    #[serde(rename = "BlockPublicPolicy", default)]
    block_public_policy: bool,
    #[serde(rename = "RestrictPublicBuckets", default)]
    restrict_public_buckets: bool,
}

#[derive(Deserialize)]
struct EncryptionXml {
    #[serde(rename = "Rule", default)]
    rule: Vec<EncRule>,
}

#[derive(Deserialize)]
struct EncRule {
    #[serde(rename = "ApplyServerSideEncryptionByDefault")]
    default: Option<EncDefault>,
}

#[derive(Deserialize)]
struct EncDefault {
    #[serde(rename = "SSEAlgorithm")]
    algorithm: String,
}

#[derive(Deserialize)]
struct LockXml {
    #[serde(rename = "ObjectLockEnabled")]
    enabled: Option<String>,
    #[serde(rename = "Rule")]
    rule: Option<LockRule>,
}

#[derive(Deserialize)]
struct LockRule {
    #[serde(rename = "DefaultRetention")]
    retention: Option<LockRetention>,
}

#[derive(Deserialize)]
struct LockRetention {
    #[serde(rename = "Mode")]
    mode: Option<String>,
    #[serde(rename = "Days")]
    days: Option<u32>,
}

const XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

fn want(b: &Bucket) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("versioning".into(), json!(b.versioning));
    m.insert("public_access_block".into(), json!(b.public_access_block));
    m.insert("encryption".into(), json!(b.encryption.as_str()));
    m.insert(
        "object_lock".into(),
        match b.object_lock {
            Some(l) => json!({"mode": l.mode, "days": l.days}),
            None => Value::Null,
        },
    );
    m
}

fn grade(field: &str, _: &Value, live: &Value) -> Severity {
    match field {
        // A bucket of the truth path that may be made public.
        "public_access_block"
            if live
                .as_object()
                .is_some_and(|m| m.values().any(|v| v != &Value::Bool(true))) =>
        {
            Severity::Critical
        }
        "public_access_block" | "encryption" | "versioning" | "object_lock" => Severity::High,
        _ => Severity::Medium,
    }
}

/// Reads every bucket git names.
pub async fn observe(p: &Platform, c: &Conn) -> Result<Observed, DriftError> {
    let client = Client::new(c)?;
    let src = sources(p);
    let mut o = Observed::default();
    // Buckets are independent: up to 32 read at once.
    let reads: Vec<_> =
        futures::stream::iter(p.s3.buckets.iter().map(|b| client.settings(&b.name)))
            .buffered(32)
            .collect()
            .await;
    for (b, live) in p.s3.buckets.iter().zip(reads) {
        let resource = format!("bucket/{}", b.name);
        if let Some(l) = live? {
            o.live.insert(resource.clone(), l);
        }
        o.wants.push(Want {
            engine: Engine::S3,
            resource,
            ensure: kfm_infra::platform::Ensure::Present,
            fields: want(b),
            source: src.clone(),
            grade: Grade::new(grade),
        });
    }
    Ok(o)
}

/// Restores one bucket's settings (creating the bucket if it is missing,
/// with object lock if git asks for it). Returns the calls made.
pub async fn fix(
    p: &Platform,
    c: &Conn,
    w: &Want,
    live: Option<&Map<String, Value>>,
) -> Result<Vec<String>, DriftError> {
    let name = w.resource.strip_prefix("bucket/").unwrap_or(&w.resource);
    let b =
        p.s3.buckets
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| DriftError::Config(format!("{}: not in git", w.resource)))?;
    let client = Client::new(c)?;
    let mut done = Vec::new();
    let differs = |k: &str| live.is_none_or(|l| l.get(k) != w.fields.get(k));
    if live.is_none() {
        let mut hdr = Vec::new();
        if b.object_lock.is_some() {
            hdr.push(("x-amz-bucket-object-lock-enabled", "true".to_owned()));
        }
        match client.send("PUT", name, "", &hdr, Vec::new()).await? {
            Ok(_) => done.push(format!("CreateBucket {name}")),
            Err(f) => return Err(fail(&format!("CreateBucket {name}"), &f)),
        }
    }
    let created = live.is_none();
    // Versioning first: object lock needs it.
    if created || differs("versioning") {
        let body = format!(
            r#"<VersioningConfiguration xmlns="{XMLNS}"><Status>{}</Status></VersioningConfiguration>"#,
            match b.versioning {
                kfm_infra::platform::Versioning::Enabled => "Enabled",
                kfm_infra::platform::Versioning::Suspended => "Suspended",
            }
        );
        client.put(name, "versioning", &[], body).await?;
        done.push(format!("PutBucketVersioning {name}"));
    }
    if created || differs("public_access_block") {
        let x = &b.public_access_block;
        let body = format!(
            r#"<PublicAccessBlockConfiguration xmlns="{XMLNS}"><BlockPublicAcls>{}</BlockPublicAcls><IgnorePublicAcls>{}</IgnorePublicAcls><BlockPublicPolicy>{}</BlockPublicPolicy><RestrictPublicBuckets>{}</RestrictPublicBuckets></PublicAccessBlockConfiguration>"#,
            x.block_public_acls,
            x.ignore_public_acls,
            x.block_public_policy,
            x.restrict_public_buckets
        );
        client.put(name, "publicAccessBlock", &[], body).await?;
        done.push(format!("PutPublicAccessBlock {name}"));
    }
    if created || differs("encryption") {
        let body = format!(
            r#"<ServerSideEncryptionConfiguration xmlns="{XMLNS}"><Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>{}</SSEAlgorithm></ApplyServerSideEncryptionByDefault></Rule></ServerSideEncryptionConfiguration>"#,
            b.encryption.as_str()
        );
        client.put(name, "encryption", &[], body).await?;
        done.push(format!("PutBucketEncryption {name}"));
    }
    if (created || differs("object_lock"))
        && let Some(l) = b.object_lock
    {
        let mode = match l.mode {
            kfm_infra::platform::LockMode::Governance => "GOVERNANCE",
            kfm_infra::platform::LockMode::Compliance => "COMPLIANCE",
        };
        let body = format!(
            r#"<ObjectLockConfiguration xmlns="{XMLNS}"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{}</Days></DefaultRetention></Rule></ObjectLockConfiguration>"#,
            l.days
        );
        client.put(name, "object-lock", &[], body).await?;
        done.push(format!("PutObjectLockConfiguration {name}"));
    }
    // Invariant: an object lock is never removed by drift: S3 has no call
    // for it, and a lock git no longer asks for is reported, not undone.
    if b.object_lock.is_none()
        && live.is_some_and(|l| !l.get("object_lock").is_none_or(Value::is_null))
    {
        return Err(err(
            &w.resource,
            "the bucket has an object lock git does not ask for; S3 cannot remove one: declare it in git",
        ));
    }
    Ok(done)
}
