//! `kfm ledger …`: append to, verify and query the audit ledger.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use kfm_core::SecretRef;
use kfm_ledger::tiles::MAX_ENTRY;
use kfm_ledger::{
    Ledger, LedgerError, LedgerSigner, verify, verify_against, verify_consistency, verify_inclusion,
};
use serde::Serialize;

use crate::cli::{Format, LedgerCommand};
use crate::failure::{EXIT_RULE, Failure};
use crate::output::print_json;
use crate::workspace::Workspace;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl From<LedgerError> for Failure {
    fn from(e: LedgerError) -> Self {
        let code = match e {
            LedgerError::EntryTooLarge { .. }
            | LedgerError::Store(_)
            | LedgerError::Witness(kfm_ledger::WitnessError::Io { .. }) => {
                crate::failure::EXIT_INPUT
            }
            _ => EXIT_RULE,
        };
        Failure {
            code,
            message: e.to_string(),
            hint: None,
        }
    }
}

/// Loads the signing key the workspace references (never printing it).
pub(crate) fn signer(ws: &Workspace) -> Result<LedgerSigner, Failure> {
    let Some(r) = &ws.config.signing_key else {
        return Err(Failure::input("no ledger signing key configured")
            .hint("set [signing] key = \"file:keys/ledger.key\" (or env:NAME) in kfm.toml"));
    };
    let text = match r {
        SecretRef::Env(name) => std::env::var(name).map_err(|_| {
            Failure::input(format!("signing.key refers to ${name}, which is not set"))
        })?,
        SecretRef::File(p) => {
            let path = if p.is_relative() {
                ws.dir.join(p)
            } else {
                p.clone()
            };
            std::fs::read_to_string(&path).map_err(|e| {
                Failure::input(format!(
                    "cannot read the signing key {}: {e}",
                    path.display()
                ))
            })?
        }
    };
    LedgerSigner::from_key_text(&text)
        .map_err(|e| Failure::input(format!("signing.key ({r}): {e}")))
}

/// The verifier key: `--verifier-key FILE`, else keys/ledger.pub, else
/// derived from the signing key.
pub(crate) fn verifier_key(ws: &Workspace, explicit: Option<&Path>) -> Result<String, Failure> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .map_err(|e| Failure::input(format!("cannot read verifier key {}: {e}", p.display())))
    };
    if let Some(p) = explicit {
        return read(p);
    }
    let default = ws.dir.join("keys/ledger.pub");
    if default.is_file() {
        return read(&default);
    }
    Ok(signer(ws)?.verifier_key().to_owned())
}

#[derive(Serialize)]
struct AppendOut {
    index: u64,
    leaf_hash: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    checkpoint: String,
}

pub async fn run(ws: Option<&Path>, cmd: &LedgerCommand, fmt: Format) -> Result<u8, Failure> {
    let ws = Workspace::find(ws)?;
    let store = ws.store()?;
    let origin = ws.config.ledger_origin.clone();
    match cmd {
        LedgerCommand::Append(a) => {
            let mut opts = ws.ledger_options(&store).await?;
            if let Some(b) = a.batch_max {
                opts.batch_max = b.max(1);
            }
            if a.lines {
                let ledger = ws
                    .open_ledger(&store, signer(&ws)?, opts, "urn:kfm:cli")
                    .await?;
                return append_lines(ledger, fmt).await;
            }
            let entry = read_entry(a.file.as_deref())?;
            let ledger = ws
                .open_ledger(&store, signer(&ws)?, opts, "urn:kfm:cli")
                .await?;
            let r = ledger.append(entry).await?;
            ledger.close().await;
            let out = AppendOut {
                index: r.index,
                leaf_hash: hex(&r.leaf_hash),
                size: r.size,
                line: None,
                checkpoint: String::from_utf8_lossy(&r.checkpoint).into_owned(),
            };
            match fmt {
                Format::Json => print_json(&out)?,
                Format::Human => {
                    println!(
                        "appended entry {} (leaf {}), durable under checkpoint:",
                        out.index, out.leaf_hash
                    );
                    print!("{}", out.checkpoint);
                }
            }
            Ok(0)
        }
        LedgerCommand::Verify(a) => {
            let vkey = verifier_key(&ws, a.read.verifier_key.as_deref())?;
            let guards = ws.ledger_guards(&store).await?;
            let (r, extends) = match &a.against {
                None => (verify(&store.audit(), &vkey, &origin, &guards).await?, None),
                Some(p) => {
                    let kept = std::fs::read(p).map_err(|e| {
                        Failure::input(format!(
                            "cannot read the kept checkpoint {}: {e}",
                            p.display()
                        ))
                    })?;
                    kfm_ledger::verify_checkpoint(&kept, &vkey, Some(&origin)).map_err(|e| {
                        Failure::input(format!("{}: {e}", p.display()))
                            .hint("give a signed checkpoint of this ledger (a copy of store/audit/checkpoint)")
                    })?;
                    let (r, x) =
                        verify_against(&store.audit(), &vkey, &origin, &guards, &kept).await?;
                    (r, Some(x))
                }
            };
            #[derive(Serialize)]
            struct Out {
                ok: bool,
                size: u64,
                root: String,
                bundles: u64,
                hash_tiles: u64,
                journal_entries: u64,
                #[serde(skip_serializing_if = "Option::is_none")]
                witnessed: Option<u64>,
                #[serde(skip_serializing_if = "Option::is_none")]
                extends: Option<ExtendsOut>,
            }
            #[derive(Serialize)]
            struct ExtendsOut {
                old_size: u64,
                proof: Vec<String>,
            }
            let out = Out {
                ok: true,
                size: r.size,
                root: hex(&r.root),
                bundles: r.bundles,
                hash_tiles: r.hash_tiles,
                journal_entries: r.journal_entries,
                witnessed: r.witnessed,
                extends: extends.map(|x| ExtendsOut {
                    old_size: x.old_size,
                    proof: x.proof.iter().map(|h| hex(h)).collect(),
                }),
            };
            match fmt {
                Format::Json => print_json(&out)?,
                Format::Human => {
                    println!(
                        "ledger verified: {} entries, root {}; checkpoint signature, {} entry bundles, {} hash tiles and {} journal entries (not yet in tiles) check out",
                        out.size, out.root, out.bundles, out.hash_tiles, out.journal_entries
                    );
                    match out.witnessed {
                        Some(w) => println!(
                            "  it holds the {w} entries witnessed at {}",
                            ws.witness_path().display()
                        ),
                        None => println!(
                            "  no checkpoint witnessed yet at {} (a writer records one)",
                            ws.witness_path().display()
                        ),
                    }
                    if let Some(x) = &out.extends {
                        println!(
                            "  it extends the kept checkpoint of {} entries (consistency proof of {} hashes verified)",
                            x.old_size,
                            x.proof.len()
                        );
                    }
                }
            }
            Ok(0)
        }
        LedgerCommand::Prove(a) => {
            let vkey = verifier_key(&ws, a.read.verifier_key.as_deref())?;
            let view = ws.ledger_view(&store, &vkey).await?;
            let index = match a.target.parse::<u64>() {
                Ok(i) => i,
                Err(_) => {
                    let h = parse_hash(&a.target)?;
                    view.find_leaf(&h).ok_or_else(|| Failure {
                        code: EXIT_RULE,
                        message: format!("no entry with leaf hash {} in the ledger", a.target),
                        hint: None,
                    })?
                }
            };
            let size = view.size();
            let proof = view.tree().prove_inclusion(index, size)?;
            let leaf = view.tree().leaf(index).unwrap_or_default();
            let root = view.root();
            verify_inclusion(index, size, &leaf, &proof, &root)?;
            #[derive(Serialize)]
            struct Out {
                index: u64,
                size: u64,
                leaf_hash: String,
                root: String,
                proof: Vec<String>,
                checkpoint: String,
            }
            let out = Out {
                index,
                size,
                leaf_hash: hex(&leaf),
                root: hex(&root),
                proof: proof.iter().map(|h| hex(h)).collect(),
                checkpoint: String::from_utf8_lossy(view.checkpoint()).into_owned(),
            };
            match fmt {
                Format::Json => print_json(&out)?,
                Format::Human => {
                    println!(
                        "entry {index} of {size}: leaf {}, root {}",
                        out.leaf_hash, out.root
                    );
                    println!("inclusion proof ({} hashes, verified):", out.proof.len());
                    for h in &out.proof {
                        println!("  {h}");
                    }
                    print!("checkpoint:\n{}", out.checkpoint);
                }
            }
            Ok(0)
        }
        LedgerCommand::Consistency(a) => {
            let vkey = verifier_key(&ws, a.read.verifier_key.as_deref())?;
            let view = ws.ledger_view(&store, &vkey).await?;
            let proof = view.tree().prove_consistency(a.old_size, a.new_size)?;
            let (r1, r2) = (
                view.tree().root_at(a.old_size)?,
                view.tree().root_at(a.new_size)?,
            );
            verify_consistency(a.old_size, a.new_size, &proof, &r1, &r2)?;
            #[derive(Serialize)]
            struct Out {
                old_size: u64,
                new_size: u64,
                old_root: String,
                new_root: String,
                proof: Vec<String>,
            }
            let out = Out {
                old_size: a.old_size,
                new_size: a.new_size,
                old_root: hex(&r1),
                new_root: hex(&r2),
                proof: proof.iter().map(|h| hex(h)).collect(),
            };
            match fmt {
                Format::Json => print_json(&out)?,
                Format::Human => {
                    println!(
                        "tree {} (root {}) extends tree {} (root {})",
                        out.new_size, out.new_root, out.old_size, out.old_root
                    );
                    println!("consistency proof ({} hashes, verified):", out.proof.len());
                    for h in &out.proof {
                        println!("  {h}");
                    }
                }
            }
            Ok(0)
        }
        LedgerCommand::Sequencer(a) => crate::events::sequencer(&ws, &store, a).await,
        LedgerCommand::Tail(a) => {
            let vkey = verifier_key(&ws, a.read.verifier_key.as_deref())?;
            let view = ws.ledger_view(&store, &vkey).await?;
            let size = view.size();
            #[derive(Serialize)]
            struct Row {
                index: u64,
                leaf_hash: String,
                entry: String,
            }
            let mut rows = Vec::new();
            for i in size.saturating_sub(a.n)..size {
                let e = view.entry(i).await?;
                rows.push(Row {
                    index: i,
                    leaf_hash: hex(&view.tree().leaf(i).unwrap_or_default()),
                    entry: String::from_utf8_lossy(&e).into_owned(),
                });
            }
            match fmt {
                Format::Json => print_json(&rows)?,
                Format::Human => {
                    println!("ledger size {size}; last {} entries:", rows.len());
                    for r in &rows {
                        let mut e = r.entry.replace('\n', "\\n");
                        if e.len() > 160 {
                            let cut = (0..=160)
                                .rev()
                                .find(|&i| e.is_char_boundary(i))
                                .unwrap_or(0);
                            e.truncate(cut);
                            e.push('…');
                        }
                        println!("{:>8}  {}  {e}", r.index, &r.leaf_hash[..16]);
                    }
                }
            }
            Ok(0)
        }
    }
}

fn parse_hash(s: &str) -> Result<[u8; 32], Failure> {
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    let bad = || {
        Failure::input(format!(
            "{s:?} is neither an entry index nor a 64-hex-digit leaf hash"
        ))
    };
    if s.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Reads one entry from a file or stdin, refusing oversize ones before
/// reading them whole.
fn read_entry(file: Option<&Path>) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    let limit = MAX_ENTRY as u64 + 1;
    let (name, res) = match file {
        Some(p) if p != Path::new("-") => (
            p.display().to_string(),
            std::fs::File::open(p).and_then(|f| f.take(limit).read_to_end(&mut buf)),
        ),
        _ => (
            "stdin".to_owned(),
            std::io::stdin().lock().take(limit).read_to_end(&mut buf),
        ),
    };
    res.map_err(|e| Failure::input(format!("cannot read {name}: {e}")))?;
    if buf.len() > MAX_ENTRY {
        // Report the real size when the file can tell it.
        let len = file
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(buf.len(), |m| {
                usize::try_from(m.len()).unwrap_or(usize::MAX)
            });
        return Err(Failure::from(LedgerError::EntryTooLarge { len }).with_context(&name));
    }
    Ok(buf)
}

/// `--lines`: every stdin line is an entry; up to 256 are in flight so that
/// group commit batches them; each acknowledgement is printed (and flushed)
/// by its own task the moment it is durable.
async fn append_lines(ledger: Ledger, fmt: Format) -> Result<u8, Failure> {
    let ledger = Arc::new(ledger);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Vec<u8>)>(256);
    let reader = tokio::task::spawn_blocking(move || -> Result<(), Failure> {
        use std::io::BufRead;
        for (i, line) in std::io::stdin().lock().split(b'\n').enumerate() {
            let line = line.map_err(|e| Failure::input(format!("cannot read stdin: {e}")))?;
            if tx.blocking_send((i as u64 + 1, line)).is_err() {
                break;
            }
        }
        Ok(())
    });
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((line, entry)) = rx.recv().await {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Failure::input(e.to_string()))?;
        let l = ledger.clone();
        tasks.spawn(async move {
            let r = l.append(entry).await;
            drop(permit);
            report_line(line, r?, fmt)
        });
        while let Some(done) = tasks.try_join_next() {
            done.map_err(|e| Failure::input(e.to_string()))??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Failure::input(e.to_string()))??;
    }
    reader.await.map_err(|e| Failure::input(e.to_string()))??;
    if let Ok(l) = Arc::try_unwrap(ledger) {
        l.close().await;
    }
    Ok(0)
}

fn report_line(line: u64, a: kfm_ledger::Appended, fmt: Format) -> Result<(), Failure> {
    match fmt {
        Format::Json => {
            let out = AppendOut {
                index: a.index,
                leaf_hash: hex(&a.leaf_hash),
                size: a.size,
                line: Some(line),
                checkpoint: String::new(),
            };
            println!(
                "{}",
                serde_json::to_string(&out).map_err(|e| Failure::input(e.to_string()))?
            );
        }
        Format::Human => println!(
            "line {line} -> entry {} (durable at size {})",
            a.index, a.size
        ),
    }
    Ok(())
}

impl From<kfm_ledger::ProofError> for Failure {
    fn from(e: kfm_ledger::ProofError) -> Self {
        let code = match e {
            kfm_ledger::ProofError::Mismatch | kfm_ledger::ProofError::RootsDiffer => EXIT_RULE,
            _ => crate::failure::EXIT_INPUT,
        };
        Failure {
            code,
            message: e.to_string(),
            hint: None,
        }
    }
}

/// The ed25519 public key inside a signed-note verifier key
/// (`<name>+<id>+<base64(0x01 || key)>`): it verifies receipts and release
/// manifests too, since one workspace key signs both.
pub(crate) fn dsse_key(verifier: &str) -> Result<ed25519_dalek::VerifyingKey, Failure> {
    use base64::Engine;
    let bad = || Failure::input(format!("not an ed25519 verifier key: {verifier}"));
    // The base64 part may itself hold '+': split off name and id only.
    let b64 = verifier.splitn(3, '+').nth(2).ok_or_else(bad)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad())?;
    let key: [u8; 32] = match raw.split_first() {
        Some((1, rest)) => rest.try_into().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| bad())
}
