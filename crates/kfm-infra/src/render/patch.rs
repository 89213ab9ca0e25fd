//! Patches: JSON 6902 and strategic-merge patches, and the targets that
//! select the objects they apply to.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchEntry {
    pub(super) path: Option<String>,
    pub(super) patch: Option<String>,
    pub(super) target: Option<Target>,
    pub(super) options: Option<Value>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Target {
    pub(super) group: Option<String>,
    pub(super) version: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) name: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) label_selector: Option<String>,
    pub(super) annotation_selector: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LabelsEntry {
    pub(super) pairs: Mapping,
    pub(super) include_selectors: Option<bool>,
    pub(super) include_templates: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ImageEntry {
    pub(super) name: String,
    pub(super) new_name: Option<String>,
    pub(super) new_tag: Option<String>,
    pub(super) digest: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplicasEntry {
    pub(super) name: String,
    pub(super) count: u32,
}

pub(super) struct PatchSpec {
    /// Line of the entry in the kustomization.
    pub(super) line: u32,
    pub(super) target: Option<Target>,
    pub(super) body: String,
    /// From `patchesJson6902` (must be a JSON 6902 list).
    pub(super) json6902: bool,
}

pub(super) fn apply_patch(
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

pub(super) fn describe(t: &Target) -> String {
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
pub(super) fn select(t: &Target, objects: &[RenderedObject]) -> Result<Vec<usize>, String> {
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

pub(super) struct Req {
    pub(super) key: String,
    pub(super) op: ReqOp,
}

pub(super) enum ReqOp {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

/// An equality-based selector (`a=b,c!=d,e,!f`); set-based ones (`in`,
/// `notin`) are refused rather than guessed.
pub(super) fn selector(s: &str) -> Result<Vec<Req>, String> {
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
