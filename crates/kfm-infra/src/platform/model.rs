//! The resolved model: what one environment wants, after the base and
//! its overlays are merged. Every type is strict (`deny_unknown_fields`).

use serde::{Deserialize, Serialize};

/// One environment's desired state, base and overlays merged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    pub env: String,
    /// How to reach each engine: addresses and the names of environment
    /// variables that hold credentials (references, never the secrets).
    #[serde(default)]
    pub engines: Engines,
    #[serde(default)]
    pub jetstream: JetStream,
    #[serde(default)]
    pub postgres: Option<Postgres>,
    #[serde(default)]
    pub s3: S3,
    /// The files merged, in order (base first).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Incidents whose live changes were adopted into the overlay.
    #[serde(default)]
    pub incidents: Vec<Incident>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Engines {
    pub nats: Option<NatsEngine>,
    pub postgres: Option<PostgresEngine>,
    pub s3: Option<S3Engine>,
    pub kubernetes: Option<KubernetesEngine>,
}

/// The cluster the environment's Kubernetes overlay is applied to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesEngine {
    /// The environment variable holding the kubeconfig file's path.
    pub kubeconfig_env: String,
    pub context: Option<String>,
    /// The overlay, relative to the repository root
    /// (`infra/k8s/overlays/prod`).
    pub overlay: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsEngine {
    pub url: String,
    /// The environment variable holding a credentials file path, if any.
    pub creds_env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresEngine {
    /// A libpq-style connection string without a password.
    pub dsn: String,
    /// The environment variable holding the password, if any.
    pub password_env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Engine {
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_env: String,
    pub secret_key_env: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Whether a resource must exist (the default) or must not.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ensure {
    #[default]
    Present,
    Absent,
}

impl Ensure {
    pub fn is_present(&self) -> bool {
        *self == Ensure::Present
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JetStream {
    /// Name prefixes of the streams and buckets this state owns: a live
    /// one under a prefix that git does not name is reported (never
    /// removed). Others on the server are someone else's.
    #[serde(default)]
    pub owns: Vec<String>,
    #[serde(default)]
    pub streams: Vec<Stream>,
    #[serde(default)]
    pub consumers: Vec<Consumer>,
    #[serde(default)]
    pub kv: Vec<KeyValue>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    Limits,
    Interest,
    Workqueue,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    Old,
    New,
}

/// A JetStream stream. Unset limits are not managed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default)]
    pub subjects: Vec<String>,
    pub storage: Option<Storage>,
    pub retention: Option<Retention>,
    pub discard: Option<Discard>,
    pub replicas: Option<usize>,
    /// `0s` for no limit.
    pub max_age: Option<String>,
    pub max_bytes: Option<i64>,
    pub max_msgs: Option<i64>,
    pub max_msg_size: Option<i32>,
    pub duplicate_window: Option<String>,
    pub deny_delete: Option<bool>,
    pub deny_purge: Option<bool>,
    pub allow_rollup: Option<bool>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    Explicit,
    None,
    All,
}

/// A durable pull consumer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub stream: String,
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    pub ack_policy: Option<AckPolicy>,
    pub filter_subject: Option<String>,
    pub max_deliver: Option<i64>,
    pub ack_wait: Option<String>,
}

/// A JetStream key-value bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    pub bucket: String,
    #[serde(default)]
    pub ensure: Ensure,
    pub history: Option<i64>,
    pub replicas: Option<usize>,
    pub storage: Option<Storage>,
    pub max_value_size: Option<i32>,
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    /// The database whose schemas, grants and extensions are managed.
    pub database: String,
    /// Name prefixes of the roles and schemas this state owns.
    #[serde(default)]
    pub owns: Vec<String>,
    #[serde(default)]
    pub extensions: Vec<Extension>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub schemas: Vec<Schema>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
}

/// A role. Every attribute left out is the least privilege.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default)]
    pub login: bool,
    #[serde(default)]
    pub inherit: bool,
    #[serde(default)]
    pub superuser: bool,
    #[serde(default)]
    pub createdb: bool,
    #[serde(default)]
    pub createrole: bool,
    #[serde(default)]
    pub replication: bool,
    #[serde(default)]
    pub bypassrls: bool,
    /// The role public (anonymous) reads connect as: a privilege on a
    /// precise schema given to it is the worst drift there is.
    #[serde(default)]
    pub public: bool,
    /// Roles this role is a member of, exactly.
    #[serde(default)]
    pub member_of: Vec<String>,
}

/// A schema, and the privileges on it and on every table in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    pub name: String,
    pub owner: Option<String>,
    /// Holds precise (restricted) coordinates.
    #[serde(default)]
    pub precise: bool,
    /// The roles with USAGE, exactly (the owner's own rights are implied).
    #[serde(default)]
    pub usage: Vec<String>,
    /// What every table in the schema must look like; tables come and go
    /// with releases, so they are judged by rule, not by name.
    pub tables: Option<TableRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableRule {
    /// The roles with SELECT, exactly (the owner's own rights are implied).
    #[serde(default)]
    pub select: Vec<String>,
    /// Row-level security must be enabled on every table.
    pub row_level_security: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3 {
    #[serde(default)]
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Versioning {
    Enabled,
    Suspended,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Encryption {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    Kms,
}

impl Encryption {
    pub fn as_str(&self) -> &'static str {
        match self {
            Encryption::Aes256 => "AES256",
            Encryption::Kms => "aws:kms",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicAccessBlock {
    pub block_public_acls: bool,
    pub ignore_public_acls: bool,
    pub block_public_policy: bool,
    pub restrict_public_buckets: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum LockMode {
    #[serde(rename = "GOVERNANCE")]
    Governance,
    #[serde(rename = "COMPLIANCE")]
    Compliance,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

/// A bucket's settings. Each must be stated: a bucket of the canonical
/// zones is never left to the server's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub name: String,
    pub versioning: Versioning,
    pub public_access_block: PublicAccessBlock,
    pub encryption: Encryption,
    /// Required on the audit bucket; `null` elsewhere.
    pub object_lock: Option<ObjectLock>,
}

/// An incident whose live change an overlay adopted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub id: String,
    pub adopted_at: String,
    pub adopted_by: String,
    /// The resources whose live settings were written into this overlay.
    #[serde(default)]
    pub resources: Vec<String>,
}
