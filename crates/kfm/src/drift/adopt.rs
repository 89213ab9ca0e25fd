//! `kfm drift adopt`: a live change made during an incident, written as a
//! desired-state overlay for review, so that git becomes true again
//! instead of the change being reverted.

use std::collections::BTreeMap;

use kfm_drift::{Drift, Severity};
use serde_json::Value;
use serde_yaml_ng::{Mapping, Value as Yaml};

use super::{actor, load};
use crate::cli::{DriftAdoptArgs, Format};
use crate::failure::{EXIT_RULE, Failure};
use crate::output::print_json;

/// Why a drift cannot be adopted, or the value git would state for it.
enum Adopt {
    Value(Value),
    Absent,
    No(&'static str),
}

fn convert(d: &Drift) -> Adopt {
    let kind = d.resource.split('/').next().unwrap_or("");
    if d.severity == Severity::Critical {
        return Adopt::No("critical drift is fixed, never adopted");
    }
    if !d.fixable {
        return Adopt::No("not in git: declare it by hand, with a reviewer");
    }
    if d.field == "exists" {
        return match (kind, &d.live) {
            ("stream" | "kv" | "consumer" | "role" | "extension", Value::Bool(false)) => {
                Adopt::Absent
            }
            _ => {
                Adopt::No("a resource git says must (not) exist: restore it, or change git by hand")
            }
        };
    }
    match (kind, d.field.as_str()) {
        ("table", _) => {
            Adopt::No("tables are judged by their schema's rule: change the rule by hand")
        }
        ("schema", "privileges") => {
            let Some(m) = d.live.as_object() else {
                return Adopt::No("unreadable privileges");
            };
            if m.values()
                .any(|p| p.as_array().is_some_and(|a| a.iter().any(|x| x != "USAGE")))
            {
                return Adopt::No(
                    "git states USAGE only: another privilege on a schema cannot be adopted",
                );
            }
            Adopt::Value(Value::Array(
                m.keys().map(|k| Value::String(k.clone())).collect(),
            ))
        }
        ("bucket", "versioning") if d.live == "Unversioned" => {
            Adopt::No("git cannot state an unversioned bucket")
        }
        ("bucket", "encryption") if d.live == "none" => {
            Adopt::No("git cannot state an unencrypted bucket")
        }
        ("bucket", "object_lock") if d.live.get("days").is_some_and(Value::is_null) => {
            Adopt::No("a lock without default retention cannot be stated")
        }
        _ => Adopt::Value(d.live.clone()),
    }
}

/// Where a resource goes in an overlay: `(section, list, identity fields)`.
type Place = (&'static str, &'static str, Vec<(&'static str, String)>);

fn place(resource: &str) -> Option<Place> {
    let (kind, name) = resource.split_once('/')?;
    Some(match kind {
        "stream" => ("jetstream", "streams", vec![("name", name.to_owned())]),
        "kv" => ("jetstream", "kv", vec![("bucket", name.to_owned())]),
        "consumer" => {
            let (s, c) = name.split_once('/')?;
            (
                "jetstream",
                "consumers",
                vec![("stream", s.to_owned()), ("name", c.to_owned())],
            )
        }
        "role" => ("postgres", "roles", vec![("name", name.to_owned())]),
        "extension" => ("postgres", "extensions", vec![("name", name.to_owned())]),
        "schema" => ("postgres", "schemas", vec![("name", name.to_owned())]),
        "bucket" => ("s3", "buckets", vec![("name", name.to_owned())]),
        _ => return None,
    })
}

fn valid_incident(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.starts_with('.')
}

pub async fn run(a: &DriftAdoptArgs, fmt: Format) -> Result<u8, Failure> {
    if !valid_incident(&a.incident) {
        return Err(Failure::input(format!(
            "--incident {:?}: use the incident record's id (letters, digits, '-', '_', '.'; at most 64)",
            a.incident
        )));
    }
    let t = &a.target;
    let l = load(t)?;
    let path = l
        .root
        .join("overlays")
        .join(&t.env)
        .join(format!("incident-{}.yaml", a.incident));
    if path.exists() {
        return Err(Failure::input(format!(
            "{} exists: incident {} was adopted already; review and commit it, or pick another id",
            path.display(),
            a.incident
        )));
    }
    let report = kfm_drift::detect(&l.platform, &l.endpoints, &l.ignores, super::today()).await?;
    // resource -> field -> value (or ensure: absent)
    let mut adopted: BTreeMap<String, Vec<(String, Yaml)>> = BTreeMap::new();
    let mut refused = Vec::new();
    for d in &report.drifts {
        match convert(d) {
            Adopt::Value(v) => {
                let y: Yaml =
                    serde_yaml_ng::to_value(&v).map_err(|e| Failure::input(e.to_string()))?;
                let field = if d.resource.starts_with("schema/") && d.field == "privileges" {
                    "usage".to_owned()
                } else {
                    d.field.clone()
                };
                adopted
                    .entry(d.resource.clone())
                    .or_default()
                    .push((field, y));
            }
            Adopt::Absent => {
                adopted
                    .entry(d.resource.clone())
                    .or_default()
                    .push(("ensure".into(), Yaml::from("absent")));
            }
            Adopt::No(why) => refused.push(serde_json::json!({
                "resource": d.resource, "field": d.field, "severity": d.severity, "why": why,
            })),
        }
    }
    if adopted.is_empty() {
        match fmt {
            Format::Json => print_json(&serde_json::json!({"adopted": false, "refused": refused}))?,
            Format::Human => {
                println!("nothing to adopt in {}", t.env);
                for r in &refused {
                    println!(
                        "  not adopted: {} {}: {}",
                        r["resource"], r["field"], r["why"]
                    );
                }
            }
        }
        return Ok(EXIT_RULE);
    }
    let mut sections: BTreeMap<&str, BTreeMap<&str, Vec<Yaml>>> = BTreeMap::new();
    for (resource, fields) in &adopted {
        let Some((section, list, ids)) = place(resource) else {
            continue;
        };
        let mut m = Mapping::new();
        for (k, v) in ids {
            m.insert(k.into(), v.into());
        }
        for (k, v) in fields {
            m.insert(k.as_str().into(), v.clone());
        }
        sections
            .entry(section)
            .or_default()
            .entry(list)
            .or_default()
            .push(Yaml::Mapping(m));
    }
    let mut doc = Mapping::new();
    doc.insert("apiVersion".into(), kfm_infra::platform::API_VERSION.into());
    doc.insert("kind".into(), "PlatformOverlay".into());
    doc.insert("env".into(), t.env.as_str().into());
    for (section, lists) in sections {
        let mut m = Mapping::new();
        for (list, items) in lists {
            m.insert(list.into(), Yaml::Sequence(items));
        }
        doc.insert(section.into(), Yaml::Mapping(m));
    }
    let who = actor(a.actor.as_deref());
    let mut inc = Mapping::new();
    inc.insert("id".into(), a.incident.as_str().into());
    inc.insert("adopted_at".into(), chrono::Utc::now().to_rfc3339().into());
    inc.insert("adopted_by".into(), who.as_str().into());
    inc.insert(
        "resources".into(),
        Yaml::Sequence(adopted.keys().map(|k| Yaml::from(k.as_str())).collect()),
    );
    doc.insert("incidents".into(), Yaml::Sequence(vec![Yaml::Mapping(inc)]));
    let body = serde_yaml_ng::to_string(&doc).map_err(|e| Failure::input(e.to_string()))?;
    let text = format!(
        "# Adopted by `kfm drift adopt` from the live platform during incident {}:\n# review it, then commit it (or revert the live change with kfm drift reconcile).\n{body}",
        a.incident
    );
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, &text)
        .map_err(|e| Failure::input(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))?;
    // The tree must still resolve with it; otherwise nothing is left behind.
    if let Err(e) = kfm_infra::platform::load(&l.root, &t.env) {
        let _ = std::fs::remove_file(&path);
        return Err(Failure::input(format!(
            "the adopted overlay would not resolve ({e}); nothing written"
        )));
    }
    match fmt {
        Format::Json => print_json(&serde_json::json!({
            "adopted": true,
            "file": path.display().to_string(),
            "incident": a.incident,
            "resources": adopted.keys().collect::<Vec<_>>(),
            "refused": refused,
            "overlay": text,
        }))?,
        Format::Human => {
            println!("wrote {} (review it: git diff / git add):", path.display());
            print!("{text}");
            for r in &refused {
                println!(
                    "not adopted: {} {}: {}",
                    r["resource"], r["field"], r["why"]
                );
            }
        }
    }
    Ok(0)
}
