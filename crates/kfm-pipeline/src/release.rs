//! Release pointers: numbering versions, verifying what a pointer names,
//! and re-checking a version's files (rollback: `rollback.rs`).
//!
//! A pointer is trusted only after it checks out end to end: the manifest
//! it names exists with the digest it claims and a valid signature, and the
//! ledger entry that moved it (the manifest after a promotion, a rollback
//! receipt after a rollback) is in the ledger with that digest. A pointer
//! edited by hand fails one of these.

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use kfm_core::{DatasetId, Digest, Envelope};
use kfm_ledger::EntrySource;
use kfm_store::{Pointer, ReadOnly, Store, StoreError, zones};
use serde::Serialize;

use crate::catalog::{self, Triplet};
use crate::error::PromoteError;
use crate::records::{self, Manifest, POINTER_KIND, ReleasePointer, manifest_of, statement_of};

fn parse_version(dir: &str) -> Option<u64> {
    kfm_store::dir_name(dir).strip_prefix('v')?.parse().ok()
}

/// Versions that exist (even partly) under processed/ or catalog/.
pub async fn existing_versions(store: &Store, ds: &DatasetId) -> Result<Vec<u64>, StoreError> {
    let mut out: Vec<u64> = Vec::new();
    for d in store.processed().list_dirs(ds.as_str()).await? {
        out.extend(parse_version(&d));
    }
    for d in store.catalog().list_dirs(ds.as_str()).await? {
        out.extend(parse_version(&d));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The next version number: above every version that exists in any form
/// (a crashed run's partial version is never reused) and above the pointer.
pub async fn next_version(
    store: &Store,
    ds: &DatasetId,
    pointer: Option<&Pointer>,
) -> Result<u64, StoreError> {
    let mut max = existing_versions(store, ds)
        .await?
        .last()
        .copied()
        .unwrap_or(0);
    if let Some(p) = pointer
        && let Ok(rp) = serde_json::from_slice::<ReleasePointer>(&p.bytes)
    {
        max = max.max(rp.version);
    }
    Ok(max + 1)
}

/// Ledger indexes the store names outside the ledger: the entry that moved
/// each release pointer. The ledger must hold every one of them, so a
/// ledger that lost entries (deleted, truncated, restored from an older
/// copy) is refused rather than trusted.
pub async fn ledger_references(store: &Store) -> Result<Vec<kfm_ledger::Reference>, StoreError> {
    let published = store.published();
    let mut out = Vec::new();
    for obj in published.list("").await? {
        let Some(bytes) = published.get_opt(&obj.key).await? else {
            continue;
        };
        // A pointer that does not parse names nothing; `kfm status` says
        // it does not verify.
        if let Ok(p) = serde_json::from_slice::<ReleasePointer>(&bytes) {
            out.push(kfm_ledger::Reference {
                what: format!("published/{}", obj.key),
                index: p.ledger_index,
            });
        }
    }
    Ok(out)
}

/// Checks a pointer against the store alone: it parses, names this
/// dataset's manifest, and the manifest has the claimed digest and a valid
/// signature by `key`.
pub async fn verify_pointer_in_store(
    catalog: &ReadOnly<zones::Catalog>,
    ds: &str,
    bytes: &[u8],
    key: &VerifyingKey,
) -> Result<(ReleasePointer, Manifest), String> {
    let p: ReleasePointer =
        serde_json::from_slice(bytes).map_err(|e| format!("not a release pointer: {e}"))?;
    if p.kind != POINTER_KIND || p.dataset != ds {
        return Err(format!(
            "the pointer is for {:?} ({}), expected {ds}",
            p.dataset, p.kind
        ));
    }
    if p.manifest != records::manifest_key(ds, p.version)
        || p.version_id != format!("{ds}@v{}", p.version)
    {
        return Err(format!(
            "the pointer names {} as version {}, which is not where that version's manifest lives",
            p.manifest, p.version
        ));
    }
    let rel = p.manifest.strip_prefix("catalog/").unwrap_or(&p.manifest);
    let mbytes = catalog
        .get_opt(rel)
        .await
        .map_err(|e| format!("cannot read {}: {e}", p.manifest))?
        .ok_or_else(|| format!("{} does not exist", p.manifest))?;
    let got = Digest::of(&mbytes).to_string();
    if got != p.manifest_digest {
        return Err(format!(
            "{} has digest {got}, the pointer claims {}",
            p.manifest, p.manifest_digest
        ));
    }
    let env = Envelope::parse(&mbytes).map_err(|e| format!("{}: {e}", p.manifest))?;
    let m = manifest_of(&env, key).map_err(|e| format!("{}: {e}", p.manifest))?;
    if m.dataset != ds || m.version != p.version {
        return Err(format!(
            "{} is the manifest of {}, not {}",
            p.manifest, m.version_id, p.version_id
        ));
    }
    if p.operation == "promote" && p.ledger_entry_digest != p.manifest_digest {
        return Err("a promotion's ledger entry must be its manifest".into());
    }
    Ok((p, m))
}

/// Checks an artifact or catalog document read back against the digest
/// its signed manifest records: the one rule every reader of a release
/// (the API, the projector, the drill) applies before using its bytes.
pub fn check_artifact(path: &str, bytes: &[u8], want: &Digest) -> Result<(), String> {
    let got = Digest::of(bytes);
    if &got == want {
        Ok(())
    } else {
        Err(format!(
            "{path} has digest {got}, the signed manifest records {want}"
        ))
    }
}

/// A pointer verified against the store and the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedRelease {
    pub pointer: ReleasePointer,
    pub manifest: Manifest,
}

/// The signed run receipt at ledger entry `index` (a rollback's, when a
/// pointer names it), its signature checked with `key`: what `kfm status`
/// shows of that run, decoded here and not by its callers.
pub async fn receipt_at(
    ledger: &impl EntrySource,
    index: u64,
    key: &VerifyingKey,
) -> Result<records::Statement, String> {
    let entry = ledger.entry(index).await.map_err(|e| e.to_string())?;
    let env = Envelope::parse(&entry).map_err(|e| format!("ledger entry {index}: {e}"))?;
    records::statement_of(&env, key).map_err(|e| format!("ledger entry {index}: {e}"))
}

/// The signed release manifest of `dataset` version `version`, its
/// signature checked with `key`, and its key in the store (`catalog/…`);
/// `None` if the version has no manifest.
pub async fn manifest_at(
    store: &Store,
    dataset: &str,
    version: u64,
    key: &VerifyingKey,
) -> Result<Option<(String, Manifest)>, String> {
    let mkey = records::manifest_key(dataset, version);
    let Some(rel) = mkey.strip_prefix("catalog/") else {
        return Err(format!("{mkey}: not under catalog/"));
    };
    let Some(bytes) = store
        .catalog()
        .get_opt(rel)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let env = Envelope::parse(&bytes).map_err(|e| format!("{mkey}: {e}"))?;
    let m = manifest_of(&env, key).map_err(|e| format!("{mkey}: {e}"))?;
    Ok(Some((mkey, m)))
}

/// Full verification of `published/<ds>.json`: [`verify_pointer`] on the
/// pointer as stored. `Ok(None)`: nothing published.
pub async fn verify_release(
    store: &Store,
    ledger: &impl EntrySource,
    ds: &str,
    key: &VerifyingKey,
) -> Result<Option<VerifiedRelease>, String> {
    let Some(ptr) = store
        .published()
        .read(&records::pointer_key(ds))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    verify_pointer(&store.reader(), ledger, ds, &ptr.bytes, key)
        .await
        .map(Some)
}

/// Verifies pointer bytes end to end with read access only (what a serving
/// process holds): [`verify_pointer_in_store`] plus the ledger entries the
/// pointer and its manifest rely on.
pub async fn verify_pointer(
    catalog: &ReadOnly<zones::Catalog>,
    ledger: &impl EntrySource,
    ds: &str,
    bytes: &[u8],
    key: &VerifyingKey,
) -> Result<VerifiedRelease, String> {
    let (p, m) = verify_pointer_in_store(catalog, ds, bytes, key).await?;
    let entry = ledger.entry(p.ledger_index).await.map_err(|e| {
        format!(
            "ledger entry {} (named by the pointer): {e}",
            p.ledger_index
        )
    })?;
    let got = Digest::of(&entry).to_string();
    if got != p.ledger_entry_digest {
        return Err(format!(
            "ledger entry {} has digest {got}, the pointer claims {}",
            p.ledger_index, p.ledger_entry_digest
        ));
    }
    if p.operation == "rollback" {
        let env = Envelope::parse(&entry).map_err(|e| e.to_string())?;
        let s = statement_of(&env, key)?;
        let names_manifest = s.subject.iter().any(|r| {
            r.name == p.manifest && format!("sha256:{}", r.digest.sha256) == p.manifest_digest
        });
        if s.predicate.operation != "rollback" || !names_manifest {
            return Err(format!(
                "ledger entry {} is not a rollback receipt for {}",
                p.ledger_index, p.manifest
            ));
        }
        if p.run_id.as_ref().is_some_and(|r| *r != s.predicate.run_id) {
            return Err(format!(
                "the pointer names run {}, but ledger entry {} is the receipt of run {}",
                p.run_id.as_deref().unwrap_or_default(),
                p.ledger_index,
                s.predicate.run_id
            ));
        }
    } else if p.operation != "promote" {
        return Err(format!("unknown pointer operation {:?}", p.operation));
    } else if p.run_id.as_ref().is_some_and(|r| *r != m.run_id) {
        return Err(format!(
            "the pointer names run {}, but {} was made by run {}",
            p.run_id.as_deref().unwrap_or_default(),
            p.manifest,
            m.run_id
        ));
    }
    let r = ledger.entry(m.receipt.ledger_index).await.map_err(|e| {
        format!(
            "the manifest's receipt (ledger entry {}): {e}",
            m.receipt.ledger_index
        )
    })?;
    if Digest::of(&r).to_string() != m.receipt.digest {
        return Err(format!(
            "ledger entry {} is not the receipt the manifest names",
            m.receipt.ledger_index
        ));
    }
    Ok(VerifiedRelease {
        pointer: p,
        manifest: m,
    })
}

async fn read_checked(store: &Store, a: &catalog::Artifact) -> Result<Vec<u8>, String> {
    let (zone, rel) = a.path.split_once('/').unwrap_or(("", &a.path));
    let got = match zone {
        "processed" => store.processed().get_opt(rel).await,
        "catalog" => store.catalog().get_opt(rel).await,
        _ => return Err(format!("{}: not a processed or catalog key", a.path)),
    }
    .map_err(|e| format!("{}: {e}", a.path))?
    .ok_or_else(|| format!("{} is missing", a.path))?;
    let d = Digest::of(&got);
    if d != a.digest || got.len() as u64 != a.size {
        return Err(format!(
            "{} has digest {d} ({} bytes), the manifest records {} ({} bytes)",
            a.path,
            got.len(),
            a.digest,
            a.size
        ));
    }
    Ok(got.to_vec())
}

/// Every file a manifest lists exists with the size it records: what a
/// quick check can prove without re-reading the bytes (a truncated or
/// missing artifact). Returns the problems, naming each file, and how many
/// files were checked. Digests are re-computed by [`check_version`].
pub async fn check_sizes(store: &Store, m: &Manifest) -> Result<(Vec<String>, usize), StoreError> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for a in m.artifacts.iter().chain(&m.catalog) {
        let (zone, rel) = a.path.split_once('/').unwrap_or(("", &a.path));
        let head = match zone {
            "processed" => store.processed().head(rel).await?,
            "catalog" => store.catalog().head(rel).await?,
            _ => {
                problems.push(format!("{}: not a processed or catalog key", a.path));
                continue;
            }
        };
        checked += 1;
        match head {
            None => problems.push(format!("{} is missing", a.path)),
            Some(o) if o.size != a.size => problems.push(format!(
                "{} is {} bytes, the manifest records {} (truncated or replaced)",
                a.path, o.size, a.size
            )),
            Some(_) => {}
        }
    }
    Ok((problems, checked))
}

/// A version's signed manifest, as stored (`UnknownVersion` if absent).
pub(crate) async fn manifest_bytes(
    store: &Store,
    ds: &str,
    v: u64,
) -> Result<(String, Bytes), PromoteError> {
    let mkey = records::manifest_key(ds, v);
    match store
        .catalog()
        .get_opt(mkey.strip_prefix("catalog/").unwrap_or(&mkey))
        .await?
    {
        Some(b) => Ok((mkey, b)),
        None => Err(PromoteError::UnknownVersion {
            dataset: ds.to_owned(),
            version: v,
        }),
    }
}

/// Every file a manifest lists, re-read and checked against its digest;
/// the catalog documents are kept for the triplet check.
pub(crate) struct Reverified {
    pub docs: Vec<(String, Vec<u8>)>,
    pub checked: usize,
    pub problems: Vec<String>,
}

impl Reverified {
    pub(crate) async fn of(store: &Store, m: &Manifest) -> Self {
        let mut out = Reverified {
            docs: Vec::new(),
            checked: 0,
            problems: Vec::new(),
        };
        for a in m.artifacts.iter().chain(&m.catalog) {
            match read_checked(store, a).await {
                Ok(b) => {
                    out.checked += 1;
                    if a.path.starts_with("catalog/") {
                        out.docs.push((a.path.clone(), b));
                    }
                }
                Err(e) => out.problems.push(e),
            }
        }
        out
    }

    pub(crate) fn doc(&self, suffix: &str) -> Option<Vec<u8>> {
        self.docs
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .map(|(_, b)| b.clone())
    }

    /// The triplet's problems; `None` when a document is missing.
    pub(crate) fn triplet_problems(&self, ds: &str, v: u64, m: &Manifest) -> Option<Vec<String>> {
        let t = Triplet {
            dcat: self.doc("dcat.jsonld")?,
            stac: self.doc("stac/collection.json")?,
            prov: self.doc("prov.json")?,
        };
        Some(catalog::check(ds, v, &t, &m.artifacts))
    }
}

/// What `kfm catalog validate` found for one version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionCheck {
    pub dataset: String,
    pub version_id: String,
    pub manifest: String,
    /// Every problem: signature, artifact digests, catalog links, schema.
    pub problems: Vec<String>,
    pub artifacts_checked: usize,
}

/// Re-verifies one version without changing anything: the manifest's
/// signature, every artifact and catalog document against the digests it
/// records, and the catalog triplet (links, digests, STAC schema).
pub async fn check_version(
    store: &Store,
    ds: &DatasetId,
    v: u64,
    key: &VerifyingKey,
) -> Result<VersionCheck, PromoteError> {
    let dsn = ds.as_str();
    let (mkey, mbytes) = manifest_bytes(store, dsn, v).await?;
    let mut out = VersionCheck {
        dataset: dsn.to_owned(),
        version_id: format!("{dsn}@v{v}"),
        manifest: mkey.clone(),
        problems: Vec::new(),
        artifacts_checked: 0,
    };
    let m = match Envelope::parse(&mbytes)
        .map_err(|e| e.to_string())
        .and_then(|env| manifest_of(&env, key))
    {
        Ok(m) => m,
        Err(e) => {
            out.problems.push(format!("{mkey}: {e}"));
            return Ok(out);
        }
    };
    let files = Reverified::of(store, &m).await;
    out.artifacts_checked = files.checked;
    out.problems.extend(files.problems.iter().cloned());
    match files.triplet_problems(dsn, v, &m) {
        Some(p) => out.problems.extend(p),
        None => out.problems.push(
            "the catalog triplet is incomplete (dcat.jsonld, stac/collection.json, prov.json)"
                .into(),
        ),
    }
    Ok(out)
}

pub use crate::rollback::{RollbackOutcome, RollbackRequest, rollback};
