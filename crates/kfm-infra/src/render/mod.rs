//! Rendering Kustomize overlays, so the rules judge what would be applied.
//!
//! An overlay's patches can undo what its base promises (a patch that sets
//! `runAsUser: 0`, drops a NetworkPolicy or swaps a pinned image for a tag),
//! so the gate renders every `Kustomization` in the tree and runs the
//! Kubernetes and NetworkPolicy rules on the result as well as on the files
//! as committed. Rendering is hermetic (local files only) and covers the
//! subset of Kustomize that deployments like `infra/k8s` use:
//!
//! - `resources` (and the deprecated `bases`): YAML files and directories
//!   holding a kustomization, rendered recursively;
//! - `patches`, `patchesJson6902`, `patchesStrategicMerge`: JSON 6902 patches
//!   (applied with the `json-patch` crate) and strategic-merge patches (maps
//!   merge, `null` deletes, the lists Kubernetes merges by key — containers,
//!   env, volumes, volume mounts, ports, … — merge by that key, other lists
//!   are replaced, `$patch: delete|replace` honoured), selected by
//!   `target` (group, version, kind, name and namespace as anchored regular
//!   expressions, equality-based `labelSelector`) or by the patch's own kind
//!   and name;
//! - `namespace`, `labels` (with `includeSelectors`/`includeTemplates`),
//!   `commonLabels`, `commonAnnotations`, `images`, `replicas`;
//!   `buildMetadata` and `sortOptions` change nothing the rules read.
//!
//! Anything else — remote resources, generators, components, Helm charts,
//! name prefixes (which rewrite references), replacements, a patch that
//! selects nothing, a strategic-merge list whose merge key is unknown —
//! cannot be rendered faithfully, so it stops the run ([`ScanError::Render`],
//! exit 2) with the field and line: nothing is judged clean that was not
//! rendered. For trees that need more, write `kustomize build` output to a
//! file and check that.

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use sha2::{Digest as _, Sha256};

use crate::scan::ScanError;
use crate::yaml::{self, Doc, Seg};

mod merge;
mod patch;

use merge::*;
use patch::*;

/// The file names Kustomize looks for in a directory, in its order.
pub const KUSTOMIZATION_FILES: &[&str] =
    &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// One object of a rendered overlay.
#[derive(Debug, Clone)]
pub struct RenderedObject {
    /// The document it came from (`file`, `start`, `text` as committed),
    /// with `value` as rendered.
    pub doc: Doc,
    /// Every change a kustomization made to it, in order: a finding the
    /// committed file does not show is blamed on the change that brought
    /// it in.
    pub changes: Vec<Change>,
}

/// One change to a rendered object.
#[derive(Debug, Clone)]
pub struct Change {
    /// The kustomization file and the line of the patch or field.
    pub file: String,
    pub line: u32,
    /// The object before the change.
    pub before: Value,
}

impl RenderedObject {
    /// Applies `f`, recording it as a change when it changed anything.
    fn change<E>(
        &mut self,
        file: &str,
        line: u32,
        f: impl FnOnce(&mut Value) -> Result<(), E>,
    ) -> Result<(), E> {
        let before = self.doc.value.clone();
        f(&mut self.doc.value)?;
        if self.doc.value != before {
            self.changes.push(Change {
                file: file.to_owned(),
                line,
                before,
            });
        }
        Ok(())
    }

    /// The object after change `i` (the state before the next change).
    pub fn after(&self, i: usize) -> &Value {
        self.changes
            .get(i + 1)
            .map_or(&self.doc.value, |c| &c.before)
    }
}

/// The digest of one rendered overlay, for plan receipts: what would be
/// applied, not only which files changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RenderedDigest {
    /// The kustomization file, as the gate prints paths.
    pub kustomization: String,
    pub objects: usize,
    /// `sha256:<hex>` of the rendered objects as a JSON array, in render
    /// order.
    pub digest: String,
}

/// Whether a document is a Kustomization (rendered, not applied).
pub fn is_kustomization(api_version: &str, kind: &str) -> bool {
    kind == "Kustomization" && api_version.starts_with("kustomize.config.k8s.io/")
}

/// Renders the kustomization in `file`; `None` when the file, despite its
/// name, is not a Kustomize Kustomization (a Flux `Kustomization` object, a
/// `Component`, which only renders inside another kustomization).
pub fn render(file: &str) -> Result<Option<Vec<RenderedObject>>, ScanError> {
    let text = read(file)?;
    if let Some(d) = yaml::documents(file, &text)?.first() {
        let av = d.value.get("apiVersion").and_then(Value::as_str);
        let kind = d.value.get("kind").and_then(Value::as_str);
        let kustomize = av.is_none_or(|a| a.starts_with("kustomize.config.k8s.io/"));
        if !kustomize || kind.is_some_and(|k| k != "Kustomization") {
            return Ok(None);
        }
    }
    let mut stack = Vec::new();
    let objects = build(&normalize(file), &mut stack)?;
    // Kustomize refuses two objects with one identity; so does the gate
    // (which of the two the cluster would keep is not knowable here).
    let mut seen = BTreeSet::new();
    for o in &objects {
        let id = identity(&o.doc.value);
        if !seen.insert(id.clone()) {
            return Err(ScanError::Render {
                path: file.to_owned(),
                line: 1,
                reason: format!(
                    "two resources render to the same object {} (second from {}:{}); a cluster keeps only one",
                    id, o.doc.file, o.doc.start
                ),
            });
        }
    }
    Ok(Some(objects))
}

/// The digest of a rendered overlay.
pub fn digest(
    kustomization: &str,
    objects: &[RenderedObject],
) -> Result<RenderedDigest, ScanError> {
    let values: Vec<&Value> = objects.iter().map(|o| &o.doc.value).collect();
    let json = serde_json::to_vec(&values).map_err(|e| ScanError::Render {
        path: kustomization.to_owned(),
        line: 1,
        reason: format!("the rendered objects are not expressible as JSON: {e}"),
    })?;
    Ok(RenderedDigest {
        kustomization: kustomization.to_owned(),
        objects: objects.len(),
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&json))),
    })
}

/// The rendered objects as multi-document YAML (`kfm infra render`).
pub fn to_yaml(objects: &[RenderedObject]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&format!("# from {}:{}\n", o.doc.file, o.doc.start));
        out.push_str(&serde_yaml_ng::to_string(&o.doc.value).unwrap_or_default());
    }
    out
}

/// The patch files a kustomization names (as the gate prints paths).
/// They hold fragments, not objects: the gate judges them as part of the
/// objects they patch, not on their own. A kustomization that does not
/// parse names none here (rendering reports it).
pub fn patch_files(kfile: &str, text: &str) -> Vec<String> {
    let Ok(v) = serde_yaml_ng::from_str::<Value>(text) else {
        return Vec::new();
    };
    let dir = parent(kfile);
    let mut out = Vec::new();
    for field in ["patches", "patchesJson6902"] {
        for p in v
            .get(field)
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let Some(path) = p.get("path").and_then(Value::as_str) {
                out.push(join(&dir, path));
            }
        }
    }
    for p in v
        .get("patchesStrategicMerge")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|p| !p.contains('\n'))
    {
        out.push(join(&dir, p));
    }
    out
}

/// The kustomization file in a directory, if it holds one.
pub fn kustomization_in(dir: &str) -> Option<String> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|f| join(dir, f))
        .find(|p| Path::new(p).is_file())
}

fn identity(v: &Value) -> String {
    let s = |p: &[&str]| {
        get_path(v, p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let ns = s(&["metadata", "namespace"]);
    format!(
        "{} {}/{}{}",
        s(&["apiVersion"]),
        s(&["kind"]),
        if ns.is_empty() {
            String::new()
        } else {
            format!("{ns}/")
        },
        s(&["metadata", "name"])
    )
}

fn read(path: &str) -> Result<String, ScanError> {
    std::fs::read_to_string(path).map_err(|e| ScanError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The fields read from a kustomization, and why the others are refused.
const SUPPORTED: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "namespace",
    "resources",
    "bases",
    "patches",
    "patchesJson6902",
    "patchesStrategicMerge",
    "labels",
    "commonLabels",
    "commonAnnotations",
    "images",
    "replicas",
    "buildMetadata",
    "sortOptions",
];

fn unsupported_reason(field: &str) -> String {
    match field {
        "namePrefix" | "nameSuffix" => format!(
            "{field} renames objects and rewrites every reference to them; the gate does not render that faithfully: drop it, or check `kustomize build` output"
        ),
        "configMapGenerator" | "secretGenerator" | "generatorOptions" | "generators" => format!(
            "{field}: generated objects are not rendered by the gate; commit the ConfigMap (a Secret by reference only), or check `kustomize build` output"
        ),
        "helmCharts" | "helmGlobals" | "helmChartInflationGenerator" => format!(
            "{field}: Helm charts are not rendered by the gate; check `kustomize build --enable-helm` (or `helm template`) output"
        ),
        "components" => {
            "components are not rendered by the gate; inline them as patches, or check `kustomize build` output".to_owned()
        }
        "replacements" | "vars" | "transformers" | "validators" | "configurations" | "crds"
        | "openapi" => format!(
            "{field} is not rendered by the gate; check `kustomize build` output instead"
        ),
        other => format!(
            "unknown field {other:?} in a Kustomization (a typo here would silently drop a setting); the gate renders: {}",
            SUPPORTED.join(", ")
        ),
    }
}

fn build(kfile: &str, stack: &mut Vec<String>) -> Result<Vec<RenderedObject>, ScanError> {
    if stack.iter().any(|s| s == kfile) {
        return Err(ScanError::Render {
            path: kfile.to_owned(),
            line: 1,
            reason: format!(
                "kustomizations include each other: {} -> {kfile}",
                stack.join(" -> ")
            ),
        });
    }
    stack.push(kfile.to_owned());
    let text = read(kfile)?;
    let docs = yaml::documents(kfile, &text)?;
    let [k] = docs.as_slice() else {
        return Err(ScanError::Render {
            path: kfile.to_owned(),
            line: 1,
            reason: format!(
                "a kustomization file holds one document, not {}",
                docs.len()
            ),
        });
    };
    let err = |segs: &[Seg<'_>], reason: String| ScanError::Render {
        path: kfile.to_owned(),
        line: k.line_of(segs).0 as usize,
        reason,
    };
    let Some(map) = k.value.as_mapping() else {
        return Err(err(&[], "a kustomization is a mapping".into()));
    };
    for key in map.keys() {
        let key = key.as_str().unwrap_or("");
        if !SUPPORTED.contains(&key) {
            return Err(err(&[Seg::Key(key)], unsupported_reason(key)));
        }
    }
    let dir = parent(kfile);
    let strings = |field: &str| -> Result<Vec<String>, ScanError> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_yaml_ng::from_value(v.clone()).map_err(|e| {
                err(
                    &[Seg::Key(field)],
                    format!("{field}: a list of strings: {e}"),
                )
            }),
        }
    };

    // Resources, in order.
    let mut objects = Vec::new();
    for field in ["bases", "resources"] {
        for (i, r) in strings(field)?.iter().enumerate() {
            let at = [Seg::Key(field), Seg::Index(i)];
            if r.contains("://") || r.starts_with("github.com/") || r.starts_with("git@") {
                return Err(err(
                    &at,
                    format!(
                        "remote resource {r:?}: the gate is hermetic; vendor it into the repository"
                    ),
                ));
            }
            let p = join(&dir, r);
            let meta = std::fs::metadata(&p)
                .map_err(|e| err(&at, format!("resource {r:?} ({p}): {e}")))?;
            if meta.is_dir() {
                let Some(sub) = kustomization_in(&p) else {
                    return Err(err(
                        &at,
                        format!("resource {r:?} is a directory without a kustomization.yaml"),
                    ));
                };
                objects.extend(build(&sub, stack)?);
            } else {
                let text = read(&p)?;
                for d in yaml::documents(&p, &text)? {
                    let av = d.value.get("apiVersion").and_then(Value::as_str);
                    let kind = d.value.get("kind").and_then(Value::as_str);
                    match (av, kind) {
                        (Some(av), Some(kind)) if is_kustomization(av, kind) => {
                            return Err(err(
                                &at,
                                format!(
                                    "resource {r:?} is a kustomization: list its directory instead"
                                ),
                            ));
                        }
                        (Some(_), Some(_)) => objects.push(RenderedObject {
                            doc: d,
                            changes: Vec::new(),
                        }),
                        _ => {
                            return Err(ScanError::Render {
                                path: p.clone(),
                                line: d.start,
                                reason: "a resource document without apiVersion and kind".into(),
                            });
                        }
                    }
                }
            }
        }
    }

    // Patches.
    let mut patches: Vec<PatchSpec> = Vec::new();
    for (field, json6902) in [("patches", false), ("patchesJson6902", true)] {
        let Some(Value::Sequence(list)) = map.get(field) else {
            if map.get(field).is_some_and(|v| !v.is_null()) {
                return Err(err(&[Seg::Key(field)], format!("{field} is a list")));
            }
            continue;
        };
        for (i, p) in list.iter().enumerate() {
            let at = [Seg::Key(field), Seg::Index(i)];
            let line = k.line_of(&at).0;
            let entry: PatchEntry = serde_yaml_ng::from_value(p.clone())
                .map_err(|e| err(&at, format!("{field}[{i}]: {e}")))?;
            if entry.options.is_some() {
                return Err(err(
                    &at,
                    "patch options (allowNameChange, allowKindChange) are not rendered by the gate"
                        .into(),
                ));
            }
            let body = match (&entry.path, &entry.patch) {
                (Some(path), None) => read(&join(&dir, path))?,
                (None, Some(inline)) => inline.clone(),
                _ => {
                    return Err(err(
                        &at,
                        format!("{field}[{i}]: give exactly one of path and patch"),
                    ));
                }
            };
            patches.push(PatchSpec {
                line,
                target: entry.target,
                body,
                json6902,
            });
        }
    }
    for (i, s) in strings("patchesStrategicMerge")?.into_iter().enumerate() {
        let line = k
            .line_of(&[Seg::Key("patchesStrategicMerge"), Seg::Index(i)])
            .0;
        let body = if s.contains('\n') {
            s
        } else {
            read(&join(&dir, &s))?
        };
        patches.push(PatchSpec {
            line,
            target: None,
            body,
            json6902: false,
        });
    }
    for p in &patches {
        apply_patch(kfile, p, &mut objects)?;
        // `$patch: delete` on a whole object removes it from the output.
        objects.retain(|o| !o.doc.value.is_null());
    }

    // Namespace.
    if let Some(ns) = map.get("namespace") {
        let Some(ns) = ns.as_str() else {
            return Err(err(
                &[Seg::Key("namespace")],
                "namespace is a string".into(),
            ));
        };
        let line = k.line_of(&[Seg::Key("namespace")]).0;
        for o in &mut objects {
            if !CLUSTER_SCOPED.contains(&kind_of(&o.doc.value)) {
                o.change(kfile, line, |v| {
                    set_path(v, &["metadata", "namespace"], Value::from(ns));
                    Ok::<(), ScanError>(())
                })?;
            }
        }
    }

    // Labels and annotations.
    let label_sets: Vec<(Mapping, bool, bool, u32)> = {
        let mut v = Vec::new();
        if let Some(c) = map.get("commonLabels") {
            let m = c.as_mapping().cloned().ok_or_else(|| {
                err(
                    &[Seg::Key("commonLabels")],
                    "commonLabels is a mapping".into(),
                )
            })?;
            v.push((m, true, true, k.line_of(&[Seg::Key("commonLabels")]).0));
        }
        if let Some(l) = map.get("labels") {
            let entries: Vec<LabelsEntry> = serde_yaml_ng::from_value(l.clone())
                .map_err(|e| err(&[Seg::Key("labels")], format!("labels: {e}")))?;
            for (i, e) in entries.into_iter().enumerate() {
                let sel = e.include_selectors.unwrap_or(false);
                let line = k.line_of(&[Seg::Key("labels"), Seg::Index(i)]).0;
                v.push((
                    e.pairs,
                    sel,
                    sel || e.include_templates.unwrap_or(false),
                    line,
                ));
            }
        }
        v
    };
    for (pairs, selectors, templates, line) in &label_sets {
        for o in &mut objects {
            o.change(kfile, *line, |v| {
                add_labels(v, pairs, *selectors, *templates);
                Ok::<(), ScanError>(())
            })?;
        }
    }
    if let Some(a) = map.get("commonAnnotations") {
        let m = a.as_mapping().cloned().ok_or_else(|| {
            err(
                &[Seg::Key("commonAnnotations")],
                "commonAnnotations is a mapping".into(),
            )
        })?;
        let line = k.line_of(&[Seg::Key("commonAnnotations")]).0;
        for o in &mut objects {
            o.change(kfile, line, |v| {
                merge_into(v, &["metadata", "annotations"], &m, true);
                for t in template_meta_paths(v) {
                    let mut p = t.to_vec();
                    p.push("annotations");
                    merge_into(v, &p, &m, true);
                }
                Ok::<(), ScanError>(())
            })?;
        }
    }

    // Images.
    if let Some(v) = map.get("images") {
        let images: Vec<ImageEntry> = serde_yaml_ng::from_value(v.clone())
            .map_err(|e| err(&[Seg::Key("images")], format!("images: {e}")))?;
        let line = k.line_of(&[Seg::Key("images")]).0;
        for o in &mut objects {
            o.change(kfile, line, |v| {
                for spec in pod_spec_paths(v) {
                    for list in ["containers", "initContainers", "ephemeralContainers"] {
                        let mut p = spec.to_vec();
                        p.push(list);
                        if let Some(Value::Sequence(cs)) = get_path_mut(v, &p) {
                            for c in cs {
                                if let Some(img) = c.get("image").and_then(Value::as_str) {
                                    let new = retag(img, &images);
                                    if new != img
                                        && let Some(m) = c.as_mapping_mut()
                                    {
                                        m.insert(Value::from("image"), Value::from(new));
                                    }
                                }
                            }
                        }
                    }
                }
                Ok::<(), ScanError>(())
            })?;
        }
    }

    // Replicas.
    if let Some(v) = map.get("replicas") {
        let entries: Vec<ReplicasEntry> = serde_yaml_ng::from_value(v.clone())
            .map_err(|e| err(&[Seg::Key("replicas")], format!("replicas: {e}")))?;
        for (i, r) in entries.iter().enumerate() {
            let line = k.line_of(&[Seg::Key("replicas"), Seg::Index(i)]).0;
            let mut hit = false;
            for o in &mut objects {
                let kind = kind_of(&o.doc.value);
                let name = get_path(&o.doc.value, &["metadata", "name"]).and_then(Value::as_str);
                if matches!(kind, "Deployment" | "StatefulSet" | "ReplicaSet")
                    && name == Some(r.name.as_str())
                {
                    o.change(kfile, line, |v| {
                        set_path(v, &["spec", "replicas"], Value::from(r.count));
                        Ok::<(), ScanError>(())
                    })?;
                    hit = true;
                }
            }
            if !hit {
                return Err(err(
                    &[Seg::Key("replicas"), Seg::Index(i)],
                    format!(
                        "replicas: no Deployment, StatefulSet or ReplicaSet named {:?}",
                        r.name
                    ),
                ));
            }
        }
    }
    stack.pop();
    Ok(objects)
}

/// Kinds `namespace:` leaves alone (cluster-scoped).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "CSIDriver",
    "CSINode",
    "Node",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "VolumeAttachment",
];

fn parent(p: &str) -> String {
    p.rsplit_once('/').map_or(String::new(), |(d, _)| {
        if d.is_empty() {
            "/".to_owned()
        } else {
            d.to_owned()
        }
    })
}

/// `dir` joined with `rel`, cleaned lexically the way the gate prints paths
/// (a leading `./` kept, `x/..` collapsed): a file reached through an
/// overlay is named as the walk names it.
pub fn join(dir: &str, rel: &str) -> String {
    if rel.starts_with('/') || dir.is_empty() {
        return normalize(rel);
    }
    normalize(&format!("{dir}/{rel}"))
}

/// Cleans a path lexically: see [`join`].
pub fn normalize(p: &str) -> String {
    let absolute = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    let leading_dot = p.starts_with("./");
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !absolute {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    let joined = out.join("/");
    if absolute {
        format!("/{joined}")
    } else if leading_dot && !joined.starts_with("..") {
        format!("./{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_as_the_walk_prints_them() {
        assert_eq!(
            join("infra/k8s/overlays/dev", "../../base"),
            "infra/k8s/base"
        );
        assert_eq!(
            join("./infra/k8s/overlays/dev", "../../base"),
            "./infra/k8s/base"
        );
        assert_eq!(join("a", "../../b"), "../b");
        assert_eq!(join("/x/y", "../z"), "/x/z");
        assert_eq!(join(".", "api.yaml"), "./api.yaml");
        assert_eq!(join("", "api.yaml"), "api.yaml");
    }

    #[test]
    fn images_are_retagged_by_name_only() {
        let e = |name: &str, new_name: Option<&str>, tag: Option<&str>, digest: Option<&str>| {
            ImageEntry {
                name: name.into(),
                new_name: new_name.map(Into::into),
                new_tag: tag.map(Into::into),
                digest: digest.map(Into::into),
            }
        };
        let d = "sha256:0123";
        assert_eq!(
            retag(
                "ghcr.io/k/kfm:1.0",
                &[e("ghcr.io/k/kfm", None, None, Some(d))]
            ),
            "ghcr.io/k/kfm@sha256:0123"
        );
        assert_eq!(
            retag(
                "localhost:5000/kfm",
                &[e("localhost:5000/kfm", None, Some("2"), None)]
            ),
            "localhost:5000/kfm:2"
        );
        assert_eq!(
            retag("kfm@sha256:aa", &[e("kfm", Some("r/kfm"), None, None)]),
            "r/kfm@sha256:aa"
        );
        assert_eq!(
            retag("other:1", &[e("kfm", None, Some("2"), None)]),
            "other:1"
        );
    }

    #[test]
    fn strategic_merge_merges_containers_by_name_and_replaces_args() {
        let mut t: Value = serde_yaml_ng::from_str(
            "spec:\n  containers:\n  - name: a\n    image: x\n    args: [1, 2]\n    env: [{name: A, value: '1'}]\n  - name: b\n    image: y\n",
        )
        .unwrap_or_default();
        let p: Value = serde_yaml_ng::from_str(
            "spec:\n  containers:\n  - name: a\n    args: [3]\n    env: [{name: B, value: '2'}]\n  - name: b\n    $patch: delete\n  - name: c\n    image: z\n",
        )
        .unwrap_or_default();
        strategic_merge(&mut t, &p, &mut Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        let want: Value = serde_yaml_ng::from_str(
            "spec:\n  containers:\n  - name: a\n    image: x\n    args: [3]\n    env: [{name: A, value: '1'}, {name: B, value: '2'}]\n  - name: c\n    image: z\n",
        )
        .unwrap_or_default();
        assert_eq!(t, want);
    }

    #[test]
    fn unknown_directives_and_compound_keys_are_refused() {
        let mut t = Value::Mapping(Mapping::new());
        let p: Value = serde_yaml_ng::from_str("spec:\n  $setElementOrder/containers: []\n")
            .unwrap_or_default();
        assert!(strategic_merge(&mut t, &p, &mut Vec::new()).is_err());
        let p: Value =
            serde_yaml_ng::from_str("spec:\n  topologySpreadConstraints: [{topologyKey: z}]\n")
                .unwrap_or_default();
        assert!(strategic_merge(&mut t, &p, &mut Vec::new()).is_err());
    }

    #[test]
    fn selectors_are_equality_based() {
        assert!(selector("a=b,c!=d,e,!f").is_ok());
        assert!(selector("tier in (ui,api)").is_err());
    }
}
