//! The drift tests' fixture: a git repository holding a desired state, a
//! kfm workspace for the ledger, names of its own on the shared servers,
//! and the engines' addresses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::bin;
use super::pg::{psql, psql_as};

/// A git repository holding a desired state, a kfm workspace for the
/// ledger, and the unique names of this test.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// Lower-case unique id (`t0a1b2c3d4e`).
    pub id: String,
    /// The test's own database, dropped before the roles.
    pub db: Option<super::pg::Db>,
}

impl Fixture {
    /// A fixture whose desired state is [`jetstream_state`] on the
    /// machine's NATS, or `None` (skipped) when NATS is unreachable.
    pub fn jetstream() -> Option<Self> {
        if !reachable(&nats_url()) && skip(&format!("NATS at {} unreachable", nats_url())) {
            return None;
        }
        let fx = Fixture::new();
        fx.write(
            &jetstream_state(&fx),
            &format!("  nats:\n    url: {}\n", nats_url()),
        );
        Some(fx)
    }

    /// A fixture whose desired state is [`postgres_state`] in a database
    /// of its own, or `None` (skipped) without PostgreSQL and PostGIS.
    pub fn postgres() -> Option<Self> {
        let mut fx = Fixture::new();
        fx.db = Some(super::pg::Db::fresh()?);
        let state = postgres_state(&fx).replace("placeholder", fx.db_name());
        fx.write(
            &state,
            "  postgres:\n    dsn: host=127.0.0.1 port=5432 user=postgres dbname=postgres\n",
        );
        Some(fx)
    }

    /// The test database's name (`postgres` without one).
    pub fn db_name(&self) -> &str {
        self.db.as_ref().map_or("postgres", |d| d.0.as_str())
    }

    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("infra/platform/base")).unwrap();
        std::fs::create_dir_all(repo.join("infra/platform/overlays/dev")).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        let out = Command::new(bin())
            .current_dir(dir.path())
            .args(["init", "ws"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Fixture { dir, id, db: None }
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn ws(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    pub fn up(&self) -> String {
        self.id.to_ascii_uppercase()
    }

    /// Writes the base and the dev overlay, and commits them.
    pub fn write(&self, base: &str, engines: &str) {
        let head = "apiVersion: kfm.dev/platform/v1\n";
        std::fs::write(
            self.repo().join("infra/platform/base/platform.yaml"),
            format!("{head}kind: PlatformState\n{base}"),
        )
        .unwrap();
        std::fs::write(
            self.repo()
                .join("infra/platform/overlays/dev/platform.yaml"),
            format!("{head}kind: PlatformOverlay\nenv: dev\nengines:\n{engines}"),
        )
        .unwrap();
        git(&self.repo(), &["add", "-A"]);
        git(&self.repo(), &["commit", "-q", "-m", "desired state"]);
    }

    pub fn approve(&self, yes: bool) {
        let p = self.repo().join("DELIVERY_APPROVED.yaml");
        if yes {
            std::fs::write(
                &p,
                "delivery:\n  approved: true\n  approver: test-approver\n  change: CHG-1\n",
            )
            .unwrap();
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }

    /// A kubeconfig for an API server on 127.0.0.1:`port`, and an overlay
    /// of one Namespace for `engines.kubernetes` to render.
    pub fn kubeconfig(&self, port: u16) {
        std::fs::write(
            self.dir.path().join("kubeconfig.yaml"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: test}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
            ),
        )
        .unwrap();
        let o = self.repo().join("infra/k8s/overlays/dev");
        std::fs::create_dir_all(&o).unwrap();
        std::fs::write(
            o.join("kustomization.yaml"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ns.yaml\n",
        )
        .unwrap();
        std::fs::write(
            o.join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kfm-drift-test\n  labels: {kfm.io/tier: data}\n",
        )
        .unwrap();
    }

    pub fn kfm(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .current_dir(self.repo())
            .env("KFM_WORKSPACE", self.ws())
            .env("KFM_TEST_S3_AK", "testing")
            .env("KFM_TEST_S3_SK", "testing")
            .env(
                "KFM_TEST_KUBECONFIG",
                self.dir.path().join("kubeconfig.yaml"),
            )
            .env_remove("KFM_LOG")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn detect(&self) -> (i32, Value) {
        let o = self.kfm(&["--format", "json", "drift", "detect"]);
        let code = o.status.code().unwrap_or(-1);
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            panic!(
                "detect (exit {code}) printed no JSON: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (code, v)
    }

    pub fn reconcile(&self) -> (i32, Output) {
        let o = self.kfm(&[
            "--format",
            "json",
            "drift",
            "reconcile",
            "--actor",
            "test:drift",
        ]);
        (o.status.code().unwrap_or(-1), o)
    }

    /// Reconcile in delivery mode (exit 0: nothing left), and check that
    /// every receipt is in a ledger that verifies.
    pub fn restore(&self) -> Value {
        self.restore_leaving(0)
    }

    pub fn restore_leaving(&self, expect: i32) -> Value {
        self.approve(true);
        let (code, o) = self.reconcile();
        self.approve(false);
        assert_eq!(
            code,
            expect,
            "reconcile: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let verify = Command::new(bin())
            .current_dir(self.ws())
            .env("KFM_WORKSPACE", self.ws())
            .args(["--format", "json", "ledger", "verify"])
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "ledger verify: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
        let tail = Command::new(bin())
            .current_dir(self.ws())
            .env("KFM_WORKSPACE", self.ws())
            .args(["--format", "json", "ledger", "tail", "-n", "100"])
            .output()
            .unwrap();
        let tail = String::from_utf8_lossy(&tail.stdout).into_owned();
        for f in v["fixed"].as_array().unwrap() {
            let r = f["resource"].as_str().unwrap();
            assert!(
                tail.contains("kfm.drift.FixReceipt") || tail.contains("drift.fix-receipt"),
                "no drift-fix receipt in the ledger tail: {tail}"
            );
            assert!(f["before"].as_str().unwrap().starts_with("sha256:"), "{r}");
            assert_ne!(f["before"], f["after"], "{r}: before and after digests");
        }
        assert_eq!(
            v["receipts"].as_array().unwrap().len(),
            v["fixed"].as_array().unwrap().len()
        );
        v
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The database first (its objects hold the roles' privileges),
        // then the roles, which are cluster-wide.
        self.db.take();
        if reachable("tcp://127.0.0.1:5432") {
            let roles = psql(
                "postgres",
                &format!(
                    "SELECT string_agg(quote_ident(rolname), ',') FROM pg_roles WHERE rolname LIKE '{}%'",
                    self.id
                ),
            );
            if !roles.is_empty() {
                let _ = psql_as(
                    "postgres",
                    "postgres",
                    &format!("DROP ROLE IF EXISTS {roles}"),
                );
            }
        }
        // Streams are server-wide: delete this test's.
        let up = self.up();
        if reachable(&nats_url()) {
            rt().block_on(async {
                if let Ok(c) = async_nats::connect(nats_url()).await {
                    let js = async_nats::jetstream::new(c);
                    for s in [
                        format!("{up}_AUDIT_DEV"),
                        format!("KV_{up}_SEQ_DEV"),
                        format!("{up}_EXTRA"),
                    ] {
                        let _ = js.delete_stream(&s).await;
                    }
                }
            });
        }
    }
}

pub fn required() -> bool {
    std::env::var("KFM_REQUIRE_SERVICES").as_deref() == Ok("1")
}

pub fn skip(what: &str) -> bool {
    assert!(!required(), "KFM_REQUIRE_SERVICES=1 but {what}");
    eprintln!("SKIPPED: {what}");
    true
}

pub fn nats_url() -> String {
    std::env::var("KFM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn reachable(url: &str) -> bool {
    let hostport = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("");
    hostport
        .parse()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

pub fn moto() -> Option<String> {
    let e = std::env::var("KFM_TEST_MOTO_ENDPOINT").ok();
    match e {
        Some(e) if reachable(&e) => Some(e),
        _ => {
            skip(
                "no S3 server with bucket settings (KFM_TEST_MOTO_ENDPOINT; scripts/test starts moto_server)",
            );
            None
        }
    }
}

pub fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The (resource, field) pairs a report names, in its order.
pub fn named(v: &Value) -> Vec<(String, String, String)> {
    v["drifts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["severity"].as_str().unwrap().to_owned(),
                d["resource"].as_str().unwrap().to_owned(),
                d["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn has(v: &Value, resource: &str, field: &str) -> bool {
    named(v).iter().any(|(_, r, f)| r == resource && f == field)
}

pub fn jetstream_state(fx: &Fixture) -> String {
    let up = fx.up();
    format!(
        "jetstream:
  owns: [\"{up}_\"]
  streams:
    - name: {up}_AUDIT_${{ENV}}
      subjects: [\"{id}.${{env}}.audit.>\"]
      storage: file
      retention: limits
      discard: new
      replicas: 1
      max_age: 0s
      duplicate_window: 2m
      deny_delete: true
      deny_purge: true
  consumers:
    - stream: {up}_AUDIT_DEV
      name: auditor
      ack_policy: explicit
      max_deliver: 5
      ack_wait: 30s
  kv:
    - bucket: {up}_SEQ_${{ENV}}
      history: 1
      storage: file
",
        id = fx.id
    )
}

pub fn postgres_state(fx: &Fixture) -> String {
    let id = &fx.id;
    format!(
        "postgres:
  database: placeholder
  owns: [\"{id}_\"]
  extensions:
    - name: postgis
  roles:
    - name: {id}_projector
      login: true
    - name: {id}_api
      login: true
      public: true
    - name: {id}_precise
      login: true
  schemas:
    - name: {id}_data
      owner: {id}_projector
      usage: [{id}_api, {id}_precise]
      tables:
        select: [{id}_api, {id}_precise]
        row_level_security: true
    - name: {id}_restricted
      owner: {id}_projector
      precise: true
      usage: [{id}_precise]
      tables:
        select: [{id}_precise]
        row_level_security: true
"
    )
}

pub fn s3_state(fx: &Fixture) -> String {
    let id = &fx.id;
    format!(
        "s3:
  buckets:
    - name: {id}-${{env}}-published
      versioning: Enabled
      public_access_block: {{block_public_acls: true, ignore_public_acls: true, block_public_policy: true, restrict_public_buckets: true}}
      encryption: AES256
      object_lock: null
    - name: {id}-${{env}}-audit
      versioning: Enabled
      public_access_block: {{block_public_acls: true, ignore_public_acls: true, block_public_policy: true, restrict_public_buckets: true}}
      encryption: aws:kms
      object_lock: {{mode: GOVERNANCE, days: 30}}
"
    )
}

pub fn boto(endpoint: &str, code: &str) {
    let o = Command::new("python3")
        .args(["-c", &format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n{code}"
        )])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// GET over plain HTTP/1.1, `None` while nothing listens.
pub fn try_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Changes a live stream's configuration through the JetStream API.
pub fn change_stream(name: &str, change: impl FnOnce(&mut async_nats::jetstream::stream::Config)) {
    rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        let mut cfg = js
            .get_stream(name)
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        change(&mut cfg);
        js.update_stream(cfg).await.unwrap();
    });
}
