//! Kubernetes manifests: strict reading of the kinds the gate knows, and the
//! platform's workload rules.
//!
//! Known kinds are deserialised into the `k8s-openapi` types through
//! `serde_ignored`, so a field Kubernetes does not define (a typo such as
//! `securityContex`, or a field from another version) is caught instead of
//! silently ignored: a misspelt `runAsNonRoot` would otherwise read as a
//! compliant manifest. Such a document stops the run (exit 2).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Namespace, PersistentVolumeClaim, Pod, PodSpec, Probe,
    ResourceRequirements, Secret, SecurityContext, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;

use crate::finding::Finding;
use crate::scan::ScanError;
use crate::yaml::{Doc, Seg};

/// hostPath volumes allowed: read-only trust stores and time zone data.
pub const ALLOWED_HOST_PATHS: &[&str] = &[
    "/etc/ssl/certs",
    "/usr/share/ca-certificates",
    "/etc/localtime",
    "/usr/share/zoneinfo",
];

/// A Kubernetes object found in the tree.
#[derive(Debug)]
pub struct Object {
    pub doc: Doc,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// As written; `None` for cluster-scoped kinds and objects that leave it
    /// to the tool applying them.
    pub namespace: Option<String>,
    pub typed: Typed,
}

/// What the tree-wide rules need of an object.
#[derive(Debug)]
pub enum Typed {
    Workload(Box<Workload>),
    NetworkPolicy(Box<NetworkPolicy>),
    Namespace(BTreeMap<String, String>),
    /// Known and strictly checked, but no rule reads it further; or a kind
    /// the gate does not know (a custom resource, a Kustomization).
    Other,
}

/// A pod template and where it sits in its document.
#[derive(Debug)]
pub struct Workload {
    /// Keys from the document root to the pod spec.
    pub spec_path: &'static [&'static str],
    /// Labels of the pods it creates.
    pub labels: BTreeMap<String, String>,
    pub spec: PodSpec,
    /// Jobs and CronJobs run to completion: probes are not required.
    pub long_running: bool,
}

/// CNI-specific network policies: the gate cannot model them, so a tree
/// holding one cannot be proved isolated.
const CNI_POLICY_GROUPS: &[&str] = &[
    "cilium.io",
    "projectcalico.org",
    "crd.projectcalico.org",
    "crd.antrea.io",
    "policy.networking.k8s.io",
    "networking.gke.io",
];

fn str_at<'a>(v: &'a serde_yaml_ng::Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(|x| x.as_str())
}

/// Reads a document as a Kubernetes object, if it is one (it has
/// `apiVersion` and `kind`).
pub fn object(doc: Doc) -> Result<Option<Object>, ScanError> {
    let (Some(api_version), Some(kind)) = (
        str_at(&doc.value, "apiVersion").map(str::to_owned),
        str_at(&doc.value, "kind").map(str::to_owned),
    ) else {
        return Ok(None);
    };
    let meta = doc.value.get("metadata");
    let name = meta
        .and_then(|m| str_at(m, "name"))
        .unwrap_or("")
        .to_owned();
    let namespace = meta.and_then(|m| str_at(m, "namespace")).map(str::to_owned);
    let group = api_version.split('/').next().unwrap_or("");
    if kind.contains("NetworkPolicy")
        && api_version != "networking.k8s.io/v1"
        && (CNI_POLICY_GROUPS.iter().any(|g| group.ends_with(g)) || api_version.contains('/'))
    {
        return Err(ScanError::Unmodelled {
            path: doc.file.clone(),
            line: doc.line_of(&[Seg::Key("kind")]).0 as usize,
            what: format!("{kind} ({api_version})"),
        });
    }
    let pod = |spec: PodSpec,
               labels: Option<BTreeMap<String, String>>,
               path: &'static [&'static str],
               long_running: bool| {
        Typed::Workload(Box::new(Workload {
            spec_path: path,
            labels: labels.unwrap_or_default(),
            spec,
            long_running,
        }))
    };
    const TEMPLATE: &[&str] = &["spec", "template", "spec"];
    let typed = match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => {
            // kubectl's List wraps whole objects in `items`, where no rule
            // would see them: it is not judged clean.
            return Err(ScanError::Schema {
                path: doc.file.clone(),
                line: doc.line_of(&[Seg::Key("kind")]).0 as usize,
                reason: "kind List: its items are not checked; write each item as its own YAML document (---)".into(),
            });
        }
        ("v1", "Pod") => {
            let p: Pod = strict(&doc, &kind)?;
            let long = !matches!(
                p.spec.as_ref().and_then(|s| s.restart_policy.as_deref()),
                Some("Never" | "OnFailure")
            );
            match p.spec {
                Some(s) => pod(s, p.metadata.labels, &["spec"], long),
                None => Typed::Other,
            }
        }
        ("apps/v1", "Deployment") => {
            let d: Deployment = strict(&doc, &kind)?;
            from_template(d.spec.map(|s| s.template), TEMPLATE, true)
        }
        ("apps/v1", "StatefulSet") => {
            let d: StatefulSet = strict(&doc, &kind)?;
            from_template(d.spec.map(|s| s.template), TEMPLATE, true)
        }
        ("apps/v1", "DaemonSet") => {
            let d: DaemonSet = strict(&doc, &kind)?;
            from_template(d.spec.map(|s| s.template), TEMPLATE, true)
        }
        ("apps/v1", "ReplicaSet") => {
            let d: ReplicaSet = strict(&doc, &kind)?;
            from_template(d.spec.and_then(|s| s.template), TEMPLATE, true)
        }
        ("batch/v1", "Job") => {
            let d: Job = strict(&doc, &kind)?;
            from_template(d.spec.map(|s| s.template), TEMPLATE, false)
        }
        ("batch/v1", "CronJob") => {
            let d: CronJob = strict(&doc, &kind)?;
            from_template(
                d.spec.job_template.spec.map(|j| j.template),
                &["spec", "jobTemplate", "spec", "template", "spec"],
                false,
            )
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            Typed::NetworkPolicy(Box::new(strict::<NetworkPolicy>(&doc, &kind)?))
        }
        ("v1", "Namespace") => {
            let n: Namespace = strict(&doc, &kind)?;
            Typed::Namespace(n.metadata.labels.unwrap_or_default())
        }
        ("v1", "Secret") => {
            strict::<Secret>(&doc, &kind)?;
            Typed::Other
        }
        ("v1", "ConfigMap") => {
            strict::<ConfigMap>(&doc, &kind)?;
            Typed::Other
        }
        ("v1", "Service") => {
            strict::<Service>(&doc, &kind)?;
            Typed::Other
        }
        ("v1", "ServiceAccount") => {
            strict::<ServiceAccount>(&doc, &kind)?;
            Typed::Other
        }
        ("v1", "PersistentVolumeClaim") => {
            strict::<PersistentVolumeClaim>(&doc, &kind)?;
            Typed::Other
        }
        ("networking.k8s.io/v1", "Ingress") => {
            strict::<Ingress>(&doc, &kind)?;
            Typed::Other
        }
        ("policy/v1", "PodDisruptionBudget") => {
            strict::<PodDisruptionBudget>(&doc, &kind)?;
            Typed::Other
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            strict::<Role>(&doc, &kind)?;
            Typed::Other
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            strict::<RoleBinding>(&doc, &kind)?;
            Typed::Other
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            strict::<ClusterRole>(&doc, &kind)?;
            Typed::Other
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            strict::<ClusterRoleBinding>(&doc, &kind)?;
            Typed::Other
        }
        (_, k) if WORKLOAD_KINDS.contains(&k) && !api_version.contains('.') => {
            // A workload kind under an apiVersion Kubernetes no longer
            // serves (extensions/v1beta1, apps/v1beta2): its fields cannot
            // be checked against a schema, so it is not judged clean.
            return Err(ScanError::Schema {
                path: doc.file.clone(),
                line: doc.line_of(&[Seg::Key("apiVersion")]).0 as usize,
                reason: format!(
                    "{kind} under apiVersion {api_version} is not served by Kubernetes 1.36; use {}",
                    if matches!(k, "Job" | "CronJob") {
                        "batch/v1"
                    } else if k == "Pod" {
                        "v1"
                    } else {
                        "apps/v1"
                    }
                ),
            });
        }
        _ => Typed::Other,
    };
    Ok(Some(Object {
        doc,
        api_version,
        kind,
        name,
        namespace,
        typed,
    }))
}

/// The workload a pod template (if any) describes.
fn from_template(
    t: Option<k8s_openapi::api::core::v1::PodTemplateSpec>,
    spec_path: &'static [&'static str],
    long_running: bool,
) -> Typed {
    match t {
        Some(t) => match t.spec {
            Some(spec) => Typed::Workload(Box::new(Workload {
                spec_path,
                labels: t.metadata.and_then(|m| m.labels).unwrap_or_default(),
                spec,
                long_running,
            })),
            None => Typed::Other,
        },
        None => Typed::Other,
    }
}

const WORKLOAD_KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

/// Deserialises a known kind, refusing any field Kubernetes does not define.
fn strict<T: DeserializeOwned>(doc: &Doc, kind: &str) -> Result<T, ScanError> {
    let mut unknown: Vec<Vec<PathSeg>> = Vec::new();
    let r: Result<T, _> = serde_ignored::deserialize(doc.value.clone(), |p| {
        let mut segs = Vec::new();
        path_segs(&p, &mut segs);
        unknown.push(segs);
    });
    let t = r.map_err(|e| ScanError::Schema {
        path: doc.file.clone(),
        line: doc.start,
        reason: format!("not a valid {kind}: {e}"),
    })?;
    if let Some(u) = unknown.first() {
        let segs: Vec<Seg<'_>> = u
            .iter()
            .map(|s| match s {
                PathSeg::Key(k) => Seg::Key(k.as_str()),
                PathSeg::Index(i) => Seg::Index(*i),
            })
            .collect();
        let (line, column) = doc.line_of(&segs);
        let dotted = u
            .iter()
            .map(|s| match s {
                PathSeg::Key(k) => k.clone(),
                PathSeg::Index(i) => i.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".");
        return Err(ScanError::UnknownField {
            path: doc.file.clone(),
            line: line as usize,
            column: column as usize,
            kind: kind.to_owned(),
            field: dotted,
        });
    }
    Ok(t)
}

enum PathSeg {
    Key(String),
    Index(usize),
}

fn path_segs(p: &serde_ignored::Path<'_>, out: &mut Vec<PathSeg>) {
    use serde_ignored::Path;
    match p {
        Path::Root => {}
        Path::Seq { parent, index } => {
            path_segs(parent, out);
            out.push(PathSeg::Index(*index));
        }
        Path::Map { parent, key } => {
            path_segs(parent, out);
            out.push(PathSeg::Key(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => path_segs(parent, out),
    }
}

/// A container of any of the three kinds, as the rules see it.
struct Ctr<'a> {
    list: &'static str,
    index: usize,
    name: &'a str,
    image: Option<&'a str>,
    liveness: Option<&'a Probe>,
    readiness: Option<&'a Probe>,
    resources: Option<&'a ResourceRequirements>,
    sc: Option<&'a SecurityContext>,
    env: Option<&'a Vec<EnvVar>>,
}

fn ctr<'a>(list: &'static str, index: usize, c: &'a Container) -> Ctr<'a> {
    Ctr {
        list,
        index,
        name: &c.name,
        image: c.image.as_deref(),
        liveness: c.liveness_probe.as_ref(),
        readiness: c.readiness_probe.as_ref(),
        resources: c.resources.as_ref(),
        sc: c.security_context.as_ref(),
        env: c.env.as_ref(),
    }
}

/// `name@sha256:<64 lowercase hex>`; anything shorter or tagged only is not
/// pinned (`@sha256:abc` is a common near-miss).
pub fn pinned(image: &str) -> bool {
    image.rsplit_once("@sha256:").is_some_and(|(name, d)| {
        !name.is_empty()
            && d.len() == 64
            && d.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Env var names whose value is a credential.
fn sensitive_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
        "ACCESS_KEY",
    ]
    .iter()
    .any(|k| n.contains(k))
}

/// The workload rules, for one object.
pub fn workload_findings(o: &Object) -> Vec<Finding> {
    let Typed::Workload(w) = &o.typed else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let base: Vec<Seg<'static>> = w.spec_path.iter().map(|k| Seg::Key(k)).collect();
    let at = |tail: &[Seg<'static>]| -> Vec<Seg<'static>> {
        let mut p = base.clone();
        p.extend_from_slice(tail);
        p
    };
    let what = format!("{} {}", o.kind, o.name);
    let spec = &w.spec;
    for (flag, key) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if flag == Some(true) {
            out.push(Finding::at_doc(
                &o.doc,
                &at(&[Seg::Key(key)]),
                "KFM-K8S-008",
                format!("{what}: {key}: true shares the node's namespace"),
            ));
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(hp) = &v.host_path {
            let ok = ALLOWED_HOST_PATHS.iter().any(|a| {
                let p = hp.path.trim_end_matches('/');
                p == *a || p.strip_prefix(a).is_some_and(|r| r.starts_with('/'))
            }) && !hp.path.contains("..");
            if !ok {
                out.push(Finding::at_doc(
                    &o.doc,
                    &at(&[Seg::Key("volumes"), Seg::Index(i), Seg::Key("hostPath")]),
                    "KFM-K8S-007",
                    format!("{what}: volume {} mounts host path {}", v.name, hp.path),
                ));
            }
        }
    }
    let pod_sc = spec.security_context.as_ref();
    let mut ctrs: Vec<Ctr<'_>> = Vec::new();
    ctrs.extend(
        spec.containers
            .iter()
            .enumerate()
            .map(|(i, c)| ctr("containers", i, c)),
    );
    ctrs.extend(
        spec.init_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| ctr("initContainers", i, c)),
    );
    ctrs.extend(
        spec.ephemeral_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| Ctr {
                list: "ephemeralContainers",
                index: i,
                name: &c.name,
                image: c.image.as_deref(),
                liveness: None,
                readiness: None,
                resources: None,
                sc: c.security_context.as_ref(),
                env: c.env.as_ref(),
            }),
    );
    for c in &ctrs {
        let here = |tail: &[Seg<'static>]| -> Vec<Seg<'static>> {
            let mut p = at(&[Seg::Key(c.list), Seg::Index(c.index)]);
            p.extend_from_slice(tail);
            p
        };
        let who = format!("{what}: {} {}", c.list.trim_end_matches('s'), c.name);
        let who = who
            .replace("initContainer ", "init container ")
            .replace("ephemeralContainer ", "ephemeral container ");
        // Probes: the long-running containers of long-running workloads.
        if w.long_running && c.list == "containers" {
            let missing: Vec<&str> = [
                ("livenessProbe", c.liveness),
                ("readinessProbe", c.readiness),
            ]
            .into_iter()
            .filter(|(_, p)| p.is_none())
            .map(|(k, _)| k)
            .collect();
            if !missing.is_empty() {
                out.push(Finding::at_doc(
                    &o.doc,
                    &here(&[]),
                    "KFM-K8S-002",
                    format!("{who} has no {}", missing.join(" or ")),
                ));
            }
        }
        // Ephemeral containers cannot declare resources (the API refuses).
        if c.list != "ephemeralContainers" {
            let mut missing = Vec::new();
            for (kind, m) in [
                ("requests", c.resources.and_then(|r| r.requests.as_ref())),
                ("limits", c.resources.and_then(|r| r.limits.as_ref())),
            ] {
                for res in ["cpu", "memory"] {
                    if !m.is_some_and(|m| m.contains_key(res)) {
                        missing.push(format!("{kind}.{res}"));
                    }
                }
            }
            if !missing.is_empty() {
                out.push(Finding::at_doc(
                    &o.doc,
                    &here(&[Seg::Key("resources")]),
                    "KFM-K8S-003",
                    format!("{who} has no resources.{}", missing.join(", resources.")),
                ));
            }
        }
        // Non-root: the container's setting overrides the pod's.
        let non_root =
            c.sc.and_then(|s| s.run_as_non_root)
                .or(pod_sc.and_then(|s| s.run_as_non_root));
        let user =
            c.sc.and_then(|s| s.run_as_user)
                .or(pod_sc.and_then(|s| s.run_as_user));
        if user == Some(0) {
            out.push(Finding::at_doc(
                &o.doc,
                &here(&[Seg::Key("securityContext"), Seg::Key("runAsUser")]),
                "KFM-K8S-004",
                format!("{who} runs as user 0 (root)"),
            ));
        } else if non_root != Some(true) {
            out.push(Finding::at_doc(
                &o.doc,
                &here(&[Seg::Key("securityContext")]),
                "KFM-K8S-004",
                format!("{who} does not set runAsNonRoot: true (pod or container)"),
            ));
        }
        if c.sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            out.push(Finding::at_doc(
                &o.doc,
                &here(&[
                    Seg::Key("securityContext"),
                    Seg::Key("allowPrivilegeEscalation"),
                ]),
                "KFM-K8S-005",
                format!("{who} does not set allowPrivilegeEscalation: false"),
            ));
        }
        if c.sc.and_then(|s| s.privileged) == Some(true) {
            out.push(Finding::at_doc(
                &o.doc,
                &here(&[Seg::Key("securityContext"), Seg::Key("privileged")]),
                "KFM-K8S-006",
                format!("{who} is privileged"),
            ));
        }
        match c.image {
            Some(img) if pinned(img) => {}
            Some(img) => out.push(Finding::at_doc(
                &o.doc,
                &here(&[Seg::Key("image")]),
                "KFM-K8S-009",
                format!("{who} uses image {img}, not pinned by a full sha256 digest"),
            )),
            None => out.push(Finding::at_doc(
                &o.doc,
                &here(&[]),
                "KFM-K8S-009",
                format!("{who} names no image"),
            )),
        }
        for (i, e) in c.env.into_iter().flatten().enumerate() {
            if e.value.as_deref().is_some_and(|v| !v.is_empty()) && sensitive_name(&e.name) {
                out.push(Finding::at_doc(
                    &o.doc,
                    &here(&[Seg::Key("env"), Seg::Index(i)]),
                    "KFM-K8S-010",
                    format!("{who} sets {} to a literal value", e.name),
                ));
            }
        }
    }
    out
}

/// `kind: Secret` documents carrying `data` or `stringData`.
pub fn secret_findings(o: &Object) -> Vec<Finding> {
    if o.kind != "Secret" || o.api_version != "v1" {
        return Vec::new();
    }
    let mut out = Vec::new();
    for key in ["data", "stringData"] {
        let non_empty = o.doc.value.get(key).is_some_and(|v| match v {
            serde_yaml_ng::Value::Mapping(m) => !m.is_empty(),
            serde_yaml_ng::Value::Null => false,
            _ => true,
        });
        if non_empty {
            out.push(Finding::at_doc(
                &o.doc,
                &[Seg::Key(key)],
                "KFM-K8S-001",
                format!("Secret {} with {key} committed to the repository", o.name),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::documents;

    fn obj(text: &str) -> Result<Option<Object>, ScanError> {
        let mut d = documents("t.yaml", text)?;
        object(d.remove(0))
    }

    #[test]
    fn digests_must_be_full() {
        assert!(pinned(&format!(
            "ghcr.io/kfm/api@sha256:{}",
            "a".repeat(64)
        )));
        assert!(pinned(&format!(
            "ghcr.io/kfm/api:1.2@sha256:{}",
            "0".repeat(64)
        )));
        assert!(!pinned("ghcr.io/kfm/api@sha256:abc"));
        assert!(!pinned("ghcr.io/kfm/api:1.2"));
        assert!(!pinned(&format!(
            "ghcr.io/kfm/api@sha256:{}",
            "A".repeat(64)
        )));
        assert!(!pinned(&format!("@sha256:{}", "a".repeat(64))));
    }

    #[test]
    fn unknown_fields_in_known_kinds_stop_the_run_with_their_place() {
        let e = obj("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n    - name: a\n      image: x\n      securityContex:\n        runAsNonRoot: true\n")
            .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.yaml:9:7:"), "{s}");
        assert!(s.contains("spec.containers.0.securityContex"), "{s}");
        // Wrong types are as fatal.
        let e = obj("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: two\n  selector: {}\n  template: {}\n").unwrap_err();
        assert!(e.to_string().contains("not a valid Deployment"), "{e}");
        // Unknown kinds are not judged by a schema.
        assert!(
            obj("apiVersion: example.com/v1\nkind: Widget\nspec: {anything: 1}\n")
                .unwrap()
                .is_some()
        );
        // CNI-specific policies cannot be modelled.
        let e = obj("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n")
            .unwrap_err();
        assert!(e.to_string().contains("cannot model"), "{e}");
        let e = obj("apiVersion: v1\nkind: List\nitems: []\n").unwrap_err();
        assert!(e.to_string().contains("its items are not checked"), "{e}");
        let e = obj("apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: x}\n")
            .unwrap_err();
        assert!(e.to_string().contains("not served"), "{e}");
    }
}
