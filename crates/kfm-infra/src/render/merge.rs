//! Strategic merge (maps merge, lists Kubernetes merges by key) and the
//! edits a kustomization makes to every object: labels, images, paths.

use super::*;

/// Strategic merge, as Kubernetes applies it to its built-in kinds: maps
/// merge, `null` deletes, the lists below merge by their key, every other
/// list is replaced.
pub(super) fn strategic_merge(
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
pub(super) fn merge_key(field: &str, items: &[Value]) -> Result<Option<&'static str>, String> {
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

pub(super) fn merge_list(
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

pub(super) fn show(path: &[String]) -> String {
    if path.is_empty() {
        "the top level".into()
    } else {
        path.join(".")
    }
}

/// An object's kind (`""` when it has none).
pub(super) fn kind_of(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// Paths of the pod specs in an object (where images and templates live).
pub(super) fn pod_spec_paths(v: &Value) -> Vec<&'static [&'static str]> {
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

pub(super) fn template_meta_paths(v: &Value) -> Vec<&'static [&'static str]> {
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
pub(super) fn add_labels(v: &mut Value, pairs: &Mapping, selectors: bool, templates: bool) {
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
pub(super) fn merge_into(v: &mut Value, path: &[&str], pairs: &Mapping, create: bool) {
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

pub(super) fn get_path<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

pub(super) fn get_path_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(k))
}

pub(super) fn ensure_path<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
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

pub(super) fn set_path(v: &mut Value, path: &[&str], new: Value) {
    *ensure_path(v, path) = new;
}

/// An image reference rewritten by the `images` entries (Kustomize's image
/// transformer: match on the name without tag or digest).
pub(super) fn retag(image: &str, entries: &[ImageEntry]) -> String {
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
