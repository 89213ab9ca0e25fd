//! Kubernetes objects: the environment's rendered overlay (what `kfm infra
//! check` judged, from `kfm_infra::render`) compared with the live objects
//! by `kubectl diff --server-side`, which asks the API server for a
//! server-side dry run of the apply and diffs its answer with the live
//! object. What the API server defaults is therefore never drift, and no
//! defaulting table is kept here.
//!
//! Correcting Kubernetes objects is the GitOps controller's job (Flux or
//! Argo CD apply the same overlays): these drifts are reported, never
//! fixed by `kfm drift reconcile`.

use std::path::PathBuf;
use std::process::Stdio;

use kfm_infra::platform::{Ensure, Platform};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::{Drift, DriftError, ENGINE_TIMEOUT, Engine, Grade, Observed, Severity, Want, sources};

/// How to reach the API server, and what to compare.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The kubeconfig file (from the variable the desired state names).
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    /// The kustomization directory of the environment's overlay.
    pub overlay: PathBuf,
    /// The kubectl to run (`kubectl` on the PATH by default).
    pub kubectl: PathBuf,
}

fn unreachable(e: impl std::fmt::Display) -> DriftError {
    DriftError::unreachable(Engine::Kubernetes, e)
}

/// The name kubectl gives an object's diff files:
/// `group.version.Kind.namespace.name` (no namespace when cluster-scoped).
fn diff_name(o: &Value) -> Option<(String, String)> {
    let api = o.get("apiVersion")?.as_str()?;
    let kind = o.get("kind")?.as_str()?;
    let meta = o.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta.get("namespace").and_then(Value::as_str);
    let gv = api.replace('/', ".");
    let file = match ns {
        Some(ns) => format!("{gv}.{kind}.{ns}.{name}"),
        None => format!("{gv}.{kind}.{name}"),
    };
    let resource = match ns {
        Some(ns) => format!("k8s/{kind}/{ns}/{name}"),
        None => format!("k8s/{kind}/{name}"),
    };
    Some((file, resource))
}

/// Kinds whose drift weakens isolation or privilege.
fn grade_kind(kind: &str) -> Severity {
    match kind {
        "NetworkPolicy" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
        | "ServiceAccount" | "Namespace" => Severity::High,
        _ => Severity::Medium,
    }
}

/// Renders the overlay, asks kubectl for the server-side diff and reads it.
pub async fn observe(p: &Platform, c: &Conn) -> Result<Observed, DriftError> {
    let shown = c.overlay.to_string_lossy().replace('\\', "/");
    let file = kfm_infra::render::kustomization_in(&shown).ok_or_else(|| {
        DriftError::Config(format!(
            "kubernetes: {shown} holds no kustomization.yaml (engines.kubernetes.overlay)"
        ))
    })?;
    let objects = kfm_infra::render::render(&file)
        .map_err(|e| DriftError::Config(format!("kubernetes: {e}")))?
        .ok_or_else(|| DriftError::Config(format!("kubernetes: {file} is not a Kustomization")))?;
    let yaml = kfm_infra::render::to_yaml(&objects);
    let mut cmd = tokio::process::Command::new(&c.kubectl);
    cmd.args([
        "diff",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        "kfm-drift",
        "-f",
        "-",
    ])
    .arg("--kubeconfig")
    .arg(&c.kubeconfig)
    .arg(format!("--request-timeout={}s", ENGINE_TIMEOUT.as_secs()))
    // Discovery is cached under the temporary directory, never $HOME
    // (a read-only root file system in the deployed workload).
    .arg("--cache-dir")
    .arg(std::env::temp_dir().join("kfm-drift-kube-cache"))
    .env_remove("KUBECTL_EXTERNAL_DIFF")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    if let Some(ctx) = &c.context {
        cmd.arg("--context").arg(ctx);
    }
    let mut child = cmd.spawn().map_err(|e| {
        unreachable(format!(
            "cannot run {} ({e}): install kubectl (Debian: kubernetes-client)",
            c.kubectl.display()
        ))
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(yaml.as_bytes())
            .await
            .map_err(unreachable)?;
    }
    let out = tokio::time::timeout(ENGINE_TIMEOUT * 6, child.wait_with_output())
        .await
        .map_err(|_| unreachable("kubectl diff did not finish in time"))?
        .map_err(unreachable)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) | Some(1) => {}
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(unreachable(format!(
                "kubectl diff --server-side failed: {}",
                err.trim().lines().last().unwrap_or("no message")
            )));
        }
    }
    let src = sources(p);
    let mut o = Observed::default();
    let blocks = split_blocks(&stdout);
    for obj in &objects {
        let value = serde_json::to_value(&obj.doc.value)
            .map_err(|e| DriftError::Config(format!("kubernetes: {}: {e}", obj.doc.file)))?;
        let Some((file, resource)) = diff_name(&value) else {
            continue;
        };
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        o.wants.push(Want {
            engine: Engine::Kubernetes,
            resource: resource.clone(),
            ensure: Ensure::Present,
            fields: Map::new(),
            source: format!("{}:{}", obj.doc.file, obj.doc.start),
            grade: Grade::new(|_, _, _| Severity::Medium),
        });
        // The object is compared by kubectl; it is "live" unless the diff
        // shows it created from nothing.
        let block = blocks
            .iter()
            .find(|(h, _)| h.ends_with(&format!("/{file}")));
        let missing = block.is_some_and(|(_, b)| b.lines().any(|l| l.starts_with("@@ -0,0 ")));
        if !missing {
            o.live.insert(resource.clone(), Map::new());
        }
        if let Some((_, body)) = block
            && !missing
        {
            let changed: Vec<&str> = body
                .lines()
                .filter(|l| {
                    (l.starts_with('+') || l.starts_with('-'))
                        && !l.starts_with("+++")
                        && !l.starts_with("---")
                })
                .collect();
            o.drifts.push(Drift {
                severity: grade_kind(kind),
                engine: Engine::Kubernetes,
                resource: resource.clone(),
                field: "spec".into(),
                desired: json!(changed.iter().filter(|l| l.starts_with('+')).map(|l| &l[1..]).collect::<Vec<_>>()),
                live: json!(changed.iter().filter(|l| l.starts_with('-')).map(|l| &l[1..]).collect::<Vec<_>>()),
                message: format!(
                    "{resource} differs from the rendered overlay (server-side dry run): {} line(s); Flux or Argo CD applies it",
                    changed.len()
                ),
                source: format!("{}:{} ({src})", obj.doc.file, obj.doc.start),
                fixable: false,
                since: None,
                ignored: None,
            });
        }
    }
    // A missing object is reported by the generic comparison ("exists"),
    // but not fixed here either.
    for w in &mut o.wants {
        w.grade = Grade::new(|_, _, _| Severity::High);
    }
    Ok(o)
}

/// `(header, body)` per object in `diff -u -N` output as kubectl prints it.
fn split_blocks(out: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("diff -u -N ") {
            // The second path names the merged (dry-run) object.
            let header = rest.split_whitespace().last().unwrap_or("").to_owned();
            blocks.push((header, String::new()));
        } else if let Some((_, body)) = blocks.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectls_diff_output_is_split_per_object() {
        let out = "diff -u -N /tmp/LIVE-1/apps.v1.Deployment.kfm-api.kfm-api /tmp/MERGED-2/apps.v1.Deployment.kfm-api.kfm-api\n--- /tmp/LIVE-1/apps.v1.Deployment.kfm-api.kfm-api\n+++ /tmp/MERGED-2/apps.v1.Deployment.kfm-api.kfm-api\n@@ -5,1 +5,1 @@\n-  replicas: 1\n+  replicas: 2\ndiff -u -N /tmp/LIVE-1/v1.Namespace.kfm-web /tmp/MERGED-2/v1.Namespace.kfm-web\n@@ -0,0 +1,4 @@\n+apiVersion: v1\n";
        let b = split_blocks(out);
        assert_eq!(b.len(), 2);
        assert!(b[0].0.ends_with("/apps.v1.Deployment.kfm-api.kfm-api"));
        assert!(b[0].1.contains("+  replicas: 2"));
        assert!(b[1].1.starts_with("@@ -0,0 "));
        let dep: Value = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kfm-api", "namespace": "kfm-api"}});
        assert_eq!(
            diff_name(&dep),
            Some((
                "apps.v1.Deployment.kfm-api.kfm-api".into(),
                "k8s/Deployment/kfm-api/kfm-api".into()
            ))
        );
        let ns: Value = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kfm-web"}});
        assert_eq!(
            diff_name(&ns).map(|x| x.0),
            Some("v1.Namespace.kfm-web".into())
        );
    }
}
