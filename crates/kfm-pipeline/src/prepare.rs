//! Gates A–E of a promotion: what it decides before it writes anything
//! outside `work/` — the streamed processing of gate A (re-hash, survey,
//! artifacts written once and again to digests), the license (B) and
//! sensitivity (C) rules, and the list of artifacts a version would hold.

use std::path::Path;

use chrono::{DateTime, Utc};
use kfm_core::{Acquisition, DatasetSpec, Digest, PolicyLabel};

use crate::catalog::Artifact;
use crate::gates::{Gate, GateResult};
use crate::generalize::Plan;
use crate::qa::QaReport;

use crate::run::PolicyInfo;

/// What processing a run produced: the survey's measures and the
/// artifacts, as files in the run's scratch directory (a pure function of
/// the raw bytes and the spec; nothing of the features is kept in memory).
pub(crate) struct Processed {
    pub bbox: Option<[f64; 4]>,
    pub qa: QaReport,
    pub artifacts: crate::process::Artifacts,
}

impl Processed {
    pub(crate) fn generalized(&self) -> bool {
        self.artifacts.generalized.is_some()
    }
}

/// Gate A's processing, streamed (see [`crate::process`]): the raw object
/// is re-hashed, surveyed, written once to files and once more to digests
/// only; `Err` is the gate's result.
pub(crate) fn process(
    spec: &DatasetSpec,
    acq: &Acquisition,
    raw: &Path,
    scratch: &Path,
    ds: &str,
    version_id: &str,
    run_id: &str,
) -> Result<(Processed, Vec<String>), GateResult> {
    use crate::process::{Dest, survey, write};
    // The bytes first: nothing is judged on bytes that are not the ones
    // acquired.
    let (got, size) = hash_file(raw).map_err(|e| {
        GateResult::cannot(
            Gate::A,
            format!("the acquisition {} cannot be read: {e}", acq.object),
        )
    })?;
    if got != acq.digest || size != acq.size {
        return Err(GateResult::fail(
            Gate::A,
            vec![format!(
                "{} no longer holds the acquired bytes: recorded {} ({} bytes), found {got} ({size} bytes)",
                acq.object, acq.digest, acq.size
            )],
        ));
    }
    let plan = match plan_of(spec) {
        Some(Ok(plan))
            if spec.sensitivity.policy_label == PolicyLabel::RestrictedSensitiveLocation =>
        {
            Some(plan)
        }
        _ => None,
    };
    let s = survey(spec, raw, plan.as_ref()).map_err(|problems| {
        GateResult::fail(
            Gate::A,
            std::iter::once(format!(
                "{} cannot be normalised into RFC 7946 GeoJSON:",
                acq.object
            ))
            .chain(problems)
            .collect(),
        )
    })?;
    if s.raw_digest != acq.digest {
        return Err(GateResult::fail(
            Gate::A,
            vec![format!("{} changed while it was read", acq.object)],
        ));
    }
    let cannot = |e: String| GateResult::cannot(Gate::A, e);
    let artifacts =
        write(spec, raw, &s, plan.as_ref(), Dest::Files(scratch), scratch).map_err(cannot)?;
    // Determinism is checked on every run, not assumed: the same bytes
    // processed again, to digests only.
    let again = write(spec, raw, &s, plan.as_ref(), Dest::Digests, scratch).map_err(|e| {
        GateResult::cannot(
            Gate::A,
            format!("the determinism check's second run did not complete: {e}"),
        )
    })?;
    if again.digests() != artifacts.digests() {
        return Err(GateResult::fail(
            Gate::A,
            vec!["processing is not deterministic: two runs over the same bytes gave different artifacts".into()],
        ));
    }
    let notes = vec![
        format!("dataset id {ds}, version {version_id}, run {run_id}"),
        format!("raw digest re-verified: {}", acq.digest),
        format!(
            "processing deterministic: two runs gave identical bytes ({} features)",
            s.count
        ),
    ];
    Ok((
        Processed {
            bbox: s.bbox,
            qa: s.qa,
            artifacts,
        },
        notes,
    ))
}

/// SHA-256 and length of a file, streamed.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = kfm_core::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((h.finish(), n))
}

pub(crate) fn plan_of(spec: &DatasetSpec) -> Option<Result<Plan, String>> {
    spec.sensitivity
        .generalization
        .as_ref()
        .map(Plan::from_spec)
}

pub(crate) fn artifact_list(spec: &DatasetSpec, v: u64, p: &Processed) -> Vec<Artifact> {
    let ds = spec.id.as_str();
    let label = spec.sensitivity.policy_label.as_str().to_owned();
    let mk = |name: &str, mt: &str, role: &str, o: &crate::process::Output, label: &str| Artifact {
        path: format!("processed/{ds}/v{v}/{name}"),
        media_type: mt.to_owned(),
        size: o.size,
        digest: o.digest,
        role: role.to_owned(),
        policy_label: Some(label.to_owned()),
    };
    let a = &p.artifacts;
    let mut out = vec![
        mk(
            "features.geojson",
            "application/geo+json",
            "data",
            &a.geojson,
            &label,
        ),
        mk(
            "features.fgb",
            "application/vnd.flatgeobuf",
            "index",
            &a.fgb,
            &label,
        ),
    ];
    if let Some((gj, gf)) = &a.generalized {
        let g = PolicyLabel::PublicGeneralized.as_str();
        out.push(mk(
            "generalized.geojson",
            "application/geo+json",
            "generalized",
            gj,
            g,
        ));
        out.push(mk(
            "generalized.fgb",
            "application/vnd.flatgeobuf",
            "generalized-index",
            gf,
            g,
        ));
    }
    out
}

pub(crate) fn gate_b(spec: &DatasetSpec, policy: Result<&PolicyInfo, &String>) -> GateResult {
    let lic = &spec.license;
    let id = lic.spdx.as_str();
    let mut problems = Vec::new();
    if lic.spdx.is_unknown() {
        problems.push(format!(
            "license.spdx is {id}: the rights are unknown, so nothing may be published; find the license and name its SPDX id"
        ));
    }
    if lic.rights_holder.as_str().trim().is_empty() {
        problems.push("license.rights_holder is empty: name who holds the rights".into());
    }
    let policy = match policy {
        Ok(p) => p,
        Err(e) => {
            return GateResult::cannot(
                Gate::B,
                format!(
                    "the policy's license table is unavailable ({e}), so license {id} cannot be judged"
                ),
            );
        }
    };
    let facts = crate::gates::license_facts(&lic.spdx, &policy.licenses);
    if !facts.unknown && !facts.in_policy {
        problems.push(format!(
            "license {id} is not known to the policy bundle (data.kfm.licenses, revision {}): add it there after legal review, or correct license.spdx",
            policy.revision
        ));
    }
    let needs_attribution = facts.needs_attribution;
    let has_attribution = lic
        .attribution
        .as_ref()
        .is_some_and(|a| !a.as_str().trim().is_empty());
    if needs_attribution && !has_attribution {
        problems.push(format!(
            "license {id} requires attribution: add license.attribution with the text users must show"
        ));
    }
    if problems.is_empty() {
        let mut notes = vec![format!(
            "{id}, rights holder {}",
            lic.rights_holder.as_str()
        )];
        if needs_attribution {
            notes.push("attribution text present".into());
        }
        if spec.license.distribution == kfm_core::spec::Distribution::MetadataOnly {
            notes.push(
                "distribution metadata-only: the catalog triplet is published, no data artifacts"
                    .into(),
            );
        }
        GateResult::pass(Gate::B, notes)
    } else {
        GateResult::fail(Gate::B, problems)
    }
}

pub(crate) fn gate_c(
    spec: &DatasetSpec,
    now: DateTime<Utc>,
    processed: Option<&Processed>,
) -> GateResult {
    let s = &spec.sensitivity;
    let label = s.policy_label;
    if let Some(r) = crate::gates::release_rule(label, s.embargo_until, now.date_naive()) {
        return r;
    }
    match label {
        PolicyLabel::RestrictedSensitiveLocation => match plan_of(spec) {
            None => GateResult::fail(
                Gate::C,
                vec!["policy_label restricted_sensitive_location requires sensitivity.generalization (grid degrees or h3 resolution)".into()],
            ),
            Some(Err(e)) => GateResult::cannot(Gate::C, e),
            Some(Ok(plan)) => match processed {
                None => GateResult::cannot(
                    Gate::C,
                    "no normalised data to generalise (gate A)",
                ),
                Some(p) if p.generalized() => GateResult::pass(
                    Gate::C,
                    vec![
                        format!("{}: public_generalized derivative produced", label.as_str()),
                        plan.describe(),
                    ],
                ),
                Some(_) => GateResult::cannot(Gate::C, "the generalised derivative was not produced"),
            },
        },
        other => GateResult::pass(Gate::C, vec![format!("policy_label {}", other.as_str())]),
    }
}
