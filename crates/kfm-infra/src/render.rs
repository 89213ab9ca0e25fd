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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchEntry {
    path: Option<String>,
    patch: Option<String>,
    target: Option<Target>,
    options: Option<Value>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Target {
    group: Option<String>,
    version: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    label_selector: Option<String>,
    annotation_selector: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LabelsEntry {
    pairs: Mapping,
    include_selectors: Option<bool>,
    include_templates: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ImageEntry {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
    digest: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicasEntry {
    name: String,
    count: u32,
}

struct PatchSpec {
    /// Line of the entry in the kustomization.
    line: u32,
    target: Option<Target>,
    body: String,
    /// From `patchesJson6902` (must be a JSON 6902 list).
    json6902: bool,
}

fn apply_patch(
    kfile: &str,
    p: &PatchSpec,
    objects: &mut [RenderedObject],
) -> Result<(), ScanError> {
    let fail = |reason: String| ScanError::Render {
        path: kfile.to_owned(),
        line: p.line as usize,
        reason,
    };
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&p.body)
        .map(Value::deserialize)
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("the patch does not parse as YAML: {e}")))?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    match docs.as_slice() {
        [Value::Sequence(_)] => {
            let ops: json_patch::Patch = serde_yaml_ng::from_value(docs[0].clone())
                .map_err(|e| fail(format!("not a JSON 6902 patch: {e}")))?;
            let Some(t) = &p.target else {
                return Err(fail("a JSON 6902 patch needs a target (kind, name)".into()));
            };
            let hits = select(t, objects).map_err(fail)?;
            if hits.is_empty() {
                return Err(fail(format!(
                    "the patch's target ({}) matches no resource; a patch that silently applies nowhere leaves the base's settings in place",
                    describe(t)
                )));
            }
            for i in hits {
                objects[i].change(kfile, p.line, |v| {
                    let id = identity(v);
                    let mut json = serde_json::to_value(&*v)
                        .map_err(|e| fail(format!("{id} is not expressible as JSON: {e}")))?;
                    json_patch::patch(&mut json, &ops)
                        .map_err(|e| fail(format!("applying it to {id}: {e}")))?;
                    *v = serde_yaml_ng::to_value(&json)
                        .map_err(|e| fail(format!("patched object: {e}")))?;
                    Ok(())
                })?;
            }
        }
        _ if p.json6902 => Err(fail(
            "patchesJson6902 entries hold a list of operations (op, path, value)".into(),
        ))?,
        [] => return Err(fail("the patch is empty".into())),
        smps => {
            for smp in smps {
                let Some(pm) = smp.as_mapping() else {
                    return Err(fail(
                        "a patch is a list of JSON 6902 operations or a mapping (strategic merge)"
                            .into(),
                    ));
                };
                let t = match &p.target {
                    Some(t) => t.clone(),
                    None => {
                        let s = |k: &str| pm.get(k).and_then(Value::as_str).map(regex::escape);
                        let meta = pm.get("metadata");
                        let m = |k: &str| {
                            meta.and_then(|m| m.get(k))
                                .and_then(Value::as_str)
                                .map(regex::escape)
                        };
                        if s("kind").is_none() || m("name").is_none() {
                            return Err(fail(
                                "a strategic-merge patch without a target names its kind and metadata.name".into(),
                            ));
                        }
                        let (group, version) = match pm.get("apiVersion").and_then(Value::as_str) {
                            Some(av) => match av.split_once('/') {
                                Some((g, v)) => (Some(regex::escape(g)), Some(regex::escape(v))),
                                None => (Some(String::new()), Some(regex::escape(av))),
                            },
                            None => (None, None),
                        };
                        Target {
                            group,
                            version,
                            kind: s("kind"),
                            name: m("name"),
                            namespace: m("namespace"),
                            ..Target::default()
                        }
                    }
                };
                let hits = select(&t, objects).map_err(fail)?;
                if hits.is_empty() {
                    return Err(fail(format!(
                        "the patch's target ({}) matches no resource; a patch that silently applies nowhere leaves the base's settings in place",
                        describe(&t)
                    )));
                }
                for i in hits {
                    let mut patch = smp.clone();
                    // The target's identity is not patched.
                    if p.target.is_none()
                        && let Some(m) = patch.as_mapping_mut()
                    {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    objects[i].change(kfile, p.line, |v| {
                        let id = identity(v);
                        strategic_merge(v, &patch, &mut Vec::new())
                            .map_err(|e| fail(format!("{id}: {e}")))
                    })?;
                }
            }
        }
    }
    Ok(())
}

fn describe(t: &Target) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("group", &t.group),
        ("version", &t.version),
        ("kind", &t.kind),
        ("name", &t.name),
        ("namespace", &t.namespace),
        ("labelSelector", &t.label_selector),
        ("annotationSelector", &t.annotation_selector),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    }
    parts.join(", ")
}

/// Indices of the objects a target selects.
fn select(t: &Target, objects: &[RenderedObject]) -> Result<Vec<usize>, String> {
    let re = |field: &str, p: &Option<String>| -> Result<Option<Regex>, String> {
        p.as_ref()
            .map(|p| {
                Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| format!("target {field} {p:?} is not a regular expression: {e}"))
            })
            .transpose()
    };
    let (group, version, kind, name, namespace) = (
        re("group", &t.group)?,
        re("version", &t.version)?,
        re("kind", &t.kind)?,
        re("name", &t.name)?,
        re("namespace", &t.namespace)?,
    );
    let labels = t.label_selector.as_deref().map(selector).transpose()?;
    let annotations = t.annotation_selector.as_deref().map(selector).transpose()?;
    let mut out = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let v = &o.doc.value;
        let s = |p: &[&str]| get_path(v, p).and_then(Value::as_str).unwrap_or("");
        let (g, ver) = match s(&["apiVersion"]).split_once('/') {
            Some((g, ver)) => (g, ver),
            None => ("", s(&["apiVersion"])),
        };
        let ok = |r: &Option<Regex>, x: &str| r.as_ref().is_none_or(|r| r.is_match(x));
        let sel_ok = |sel: &Option<Vec<Req>>, field: &str| {
            sel.as_ref().is_none_or(|reqs| {
                let m = get_path(v, &["metadata", field]).and_then(Value::as_mapping);
                reqs.iter().all(|r| {
                    let val = m
                        .and_then(|m| m.get(r.key.as_str()))
                        .and_then(Value::as_str);
                    match (&r.op, val) {
                        (ReqOp::Eq(x), Some(y)) => x == y,
                        (ReqOp::Eq(_), None) => false,
                        (ReqOp::Ne(x), y) => y != Some(x.as_str()),
                        (ReqOp::Exists, y) => y.is_some(),
                        (ReqOp::Absent, y) => y.is_none(),
                    }
                })
            })
        };
        if ok(&group, g)
            && ok(&version, ver)
            && ok(&kind, s(&["kind"]))
            && ok(&name, s(&["metadata", "name"]))
            && ok(&namespace, s(&["metadata", "namespace"]))
            && sel_ok(&labels, "labels")
            && sel_ok(&annotations, "annotations")
        {
            out.push(i);
        }
    }
    Ok(out)
}

struct Req {
    key: String,
    op: ReqOp,
}

enum ReqOp {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

/// An equality-based selector (`a=b,c!=d,e,!f`); set-based ones (`in`,
/// `notin`) are refused rather than guessed.
fn selector(s: &str) -> Result<Vec<Req>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains('(') || part.contains(" in ") || part.contains(" notin ") {
            return Err(format!(
                "selector {s:?}: set-based requirements are not rendered by the gate; use key=value"
            ));
        }
        let req = if let Some((k, v)) = part.split_once("!=") {
            Req {
                key: k.trim().into(),
                op: ReqOp::Ne(v.trim().into()),
            }
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Req {
                key: k.trim().into(),
                op: ReqOp::Eq(v.trim().into()),
            }
        } else if let Some(k) = part.strip_prefix('!') {
            Req {
                key: k.trim().into(),
                op: ReqOp::Absent,
            }
        } else {
            Req {
                key: part.into(),
                op: ReqOp::Exists,
            }
        };
        out.push(req);
    }
    Ok(out)
}

/// Strategic merge, as Kubernetes applies it to its built-in kinds: maps
/// merge, `null` deletes, the lists below merge by their key, every other
/// list is replaced.
fn strategic_merge(
    target: &mut Value,
    patch: &Value,
    path: &mut Vec<String>,
) -> Result<(), String> {
    let Some(pm) = patch.as_mapping() else {
        *target = patch.clone();
        return Ok(());
    };
    let mut directive = None;
    for k in pm.keys() {
        let k = k.as_str().unwrap_or("");
        if k == "$patch" {
            directive = pm.get(k).and_then(Value::as_str);
        } else if k.starts_with('$') {
            return Err(format!(
                "at {}: directive {k} is not rendered by the gate; write the change as a JSON 6902 patch",
                show(path)
            ));
        }
    }
    match directive {
        None => {}
        Some("replace") => {
            let mut m = pm.clone();
            m.remove("$patch");
            *target = Value::Mapping(m);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(d) => {
            return Err(format!("at {}: unknown $patch directive {d:?}", show(path)));
        }
    }
    if !target.is_mapping() {
        *target = Value::Mapping(Mapping::new());
    }
    let Some(tm) = target.as_mapping_mut() else {
        return Ok(());
    };
    for (k, v) in pm {
        let key = k.as_str().unwrap_or("").to_owned();
        path.push(key.clone());
        match v {
            Value::Null => {
                tm.remove(k);
            }
            Value::Mapping(_) => {
                let entry = tm.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(entry, v, path)?;
                if entry.is_null() {
                    tm.remove(k);
                }
            }
            Value::Sequence(items) => {
                let entry = tm.entry(k.clone()).or_insert(Value::Sequence(Vec::new()));
                merge_list(&key, entry, items, path)?;
            }
            other => {
                tm.insert(k.clone(), other.clone());
            }
        }
        path.pop();
    }
    Ok(())
}

/// The merge key of a list Kubernetes merges (patchStrategy `merge`), from
/// its field name and, for `ports`, from what the elements hold.
fn merge_key(field: &str, items: &[Value]) -> Result<Option<&'static str>, String> {
    Ok(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        "ownerReferences" => Some("uid"),
        "ports" => {
            if items.iter().all(|i| i.get("containerPort").is_some()) {
                Some("containerPort")
            } else if items.iter().all(|i| i.get("port").is_some()) {
                Some("port")
            } else {
                return Err(
                    "ports entries name neither containerPort nor port on every element".into(),
                );
            }
        }
        "topologySpreadConstraints" => {
            return Err("topologySpreadConstraints merge by a compound key the gate does not render; write the change as a JSON 6902 patch".into());
        }
        _ => None,
    })
}

fn merge_list(
    field: &str,
    target: &mut Value,
    items: &[Value],
    path: &mut Vec<String>,
) -> Result<(), String> {
    let key = merge_key(field, items).map_err(|e| format!("at {}: {e}", show(path)))?;
    let Some(key) = key else {
        if field == "finalizers" {
            // A merged list of strings: the union.
            let cur = target.as_sequence_mut();
            if let Some(cur) = cur {
                for i in items {
                    if !cur.contains(i) {
                        cur.push(i.clone());
                    }
                }
                return Ok(());
            }
        }
        *target = Value::Sequence(items.to_vec());
        return Ok(());
    };
    if !target.is_sequence() {
        *target = Value::Sequence(Vec::new());
    }
    let Some(cur) = target.as_sequence_mut() else {
        return Ok(());
    };
    for (i, item) in items.iter().enumerate() {
        let Some(id) = item.get(key) else {
            return Err(format!(
                "at {}[{i}]: the element has no {key} (the list merges by it)",
                show(path)
            ));
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(id));
        path.push(format!(
            "[{key}={}]",
            serde_yaml_ng::to_string(id).unwrap_or_default().trim()
        ));
        match pos {
            Some(p) => {
                strategic_merge(&mut cur[p], item, path)?;
                if cur[p].is_null() {
                    cur.remove(p);
                }
            }
            None => {
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    // Deleting what is not there: nothing to do.
                } else {
                    let mut new = Value::Null;
                    strategic_merge(&mut new, item, path)?;
                    cur.push(new);
                }
            }
        }
        path.pop();
    }
    Ok(())
}

fn show(path: &[String]) -> String {
    if path.is_empty() {
        "the top level".into()
    } else {
        path.join(".")
    }
}

/// An object's kind (`""` when it has none).
fn kind_of(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// Paths of the pod specs in an object (where images and templates live).
fn pod_spec_paths(v: &Value) -> Vec<&'static [&'static str]> {
    match kind_of(v) {
        "Pod" => vec![&["spec"]],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController"
        | "PodTemplate" => vec![&["spec", "template", "spec"]],
        "CronJob" => vec![&["spec", "jobTemplate", "spec", "template", "spec"]],
        _ => Vec::new(),
    }
}

fn template_meta_paths(v: &Value) -> Vec<&'static [&'static str]> {
    match kind_of(v) {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => {
            vec![&["spec", "template", "metadata"]]
        }
        "CronJob" => vec![
            &["spec", "jobTemplate", "metadata"],
            &["spec", "jobTemplate", "spec", "template", "metadata"],
        ],
        _ => Vec::new(),
    }
}

/// Adds labels where Kustomize's label transformer puts them: always on
/// the object; with `templates`, on pod templates; with `selectors`, on the
/// selectors that pick those pods (workloads, Services, NetworkPolicies,
/// PodDisruptionBudgets; NetworkPolicy and PDB selectors only where they
/// already exist).
fn add_labels(v: &mut Value, pairs: &Mapping, selectors: bool, templates: bool) {
    merge_into(v, &["metadata", "labels"], pairs, true);
    let kind = kind_of(v).to_owned();
    if templates {
        for t in template_meta_paths(v) {
            let mut p = t.to_vec();
            p.push("labels");
            merge_into(v, &p, pairs, true);
        }
    }
    if selectors {
        match kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                merge_into(
                    v,
                    &["spec", "selector", "matchLabels"],
                    pairs,
                    kind != "Job",
                );
            }
            "Service" | "ReplicationController" => {
                merge_into(v, &["spec", "selector"], pairs, true)
            }
            "PodDisruptionBudget" => {
                merge_into(v, &["spec", "selector", "matchLabels"], pairs, false)
            }
            "NetworkPolicy" => {
                merge_into(v, &["spec", "podSelector", "matchLabels"], pairs, false);
                for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
                    let n = get_path(v, &["spec", dir])
                        .and_then(Value::as_sequence)
                        .map_or(0, Vec::len);
                    for i in 0..n {
                        let m = get_path(v, &["spec", dir])
                            .and_then(|s| s.get(i))
                            .and_then(|r| r.get(peers))
                            .and_then(Value::as_sequence)
                            .map_or(0, Vec::len);
                        for j in 0..m {
                            if let Some(peer) = get_path_mut(v, &["spec", dir])
                                .and_then(|s| s.get_mut(i))
                                .and_then(|r| r.get_mut(peers))
                                .and_then(|p| p.get_mut(j))
                            {
                                merge_into(peer, &["podSelector", "matchLabels"], pairs, false);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Merges `pairs` into the mapping at `path`, creating it when `create`
/// (otherwise only where the path exists).
fn merge_into(v: &mut Value, path: &[&str], pairs: &Mapping, create: bool) {
    if !create && get_path(v, path).is_none() {
        return;
    }
    let target = ensure_path(v, path);
    if !target.is_mapping() {
        *target = Value::Mapping(Mapping::new());
    }
    if let Some(m) = target.as_mapping_mut() {
        for (k, val) in pairs {
            m.insert(k.clone(), val.clone());
        }
    }
}

fn get_path<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn get_path_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(k))
}

fn ensure_path<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    let mut cur = v;
    for k in path {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else {
            unreachable!("made a mapping above")
        };
        cur = m.entry(Value::from(*k)).or_insert(Value::Null);
    }
    cur
}

fn set_path(v: &mut Value, path: &[&str], new: Value) {
    *ensure_path(v, path) = new;
}

/// An image reference rewritten by the `images` entries (Kustomize's image
/// transformer: match on the name without tag or digest).
fn retag(image: &str, entries: &[ImageEntry]) -> String {
    let (no_digest, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match no_digest[slash..].rfind(':') {
        Some(i) => (&no_digest[..slash + i], Some(&no_digest[slash + i + 1..])),
        None => (no_digest, None),
    };
    let Some(e) = entries.iter().find(|e| e.name == name) else {
        return image.to_owned();
    };
    let new_name = e.new_name.as_deref().unwrap_or(name);
    if let Some(d) = &e.digest {
        format!("{new_name}@{d}")
    } else if let Some(t) = &e.new_tag {
        format!("{new_name}:{t}")
    } else {
        let mut s = new_name.to_owned();
        if let Some(t) = tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

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
