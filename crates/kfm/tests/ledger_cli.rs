//! `kfm ledger` as a user and an attacker drive it: crashes mid-batch, a
//! second writer, tampering.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use assert_cmd::Command;
use kfm_ledger::LedgerView;
use predicates::prelude::*;

fn kfm(ws: &Path) -> Command {
    let mut c = Command::cargo_bin("kfm").unwrap();
    c.current_dir(ws)
        .env_remove("KFM_WORKSPACE")
        .env_remove("KFM_STORE_URL");
    c
}

fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    kfm(dir.path()).args(["init", "ws"]).assert().success();
    let ws = dir.path().join("ws");
    (dir, ws)
}

/// Starts `kfm [--format json] ledger append --lines` in `ws` with piped
/// stdin and stdout.
fn lines_writer(ws: &Path, json: bool) -> std::process::Child {
    lines_writer_with(ws, json, &[])
}

/// [`lines_writer`] with extra environment variables.
fn lines_writer_with(ws: &Path, json: bool, env: &[(&str, &str)]) -> std::process::Child {
    let mut args = if json {
        vec!["--format", "json"]
    } else {
        vec![]
    };
    args.extend(["ledger", "append", "--lines"]);
    std::process::Command::new(assert_cmd::cargo::cargo_bin("kfm"))
        .args(args)
        .current_dir(ws)
        .env_remove("KFM_WORKSPACE")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn view(ws: &Path, rt: &tokio::runtime::Runtime) -> LedgerView {
    let store = kfm_store::Store::open_local(&ws.join("store")).unwrap();
    let vkey = std::fs::read_to_string(ws.join("keys/ledger.pub")).unwrap();
    let guards = kfm_ledger::Guards {
        witness: Some(ws.join("ledger-witness/checkpoint")),
        references: Vec::new(),
    };
    rt.block_on(LedgerView::open(
        &store.audit(),
        vkey.trim(),
        "kfm.local/dev",
        &guards,
    ))
    .unwrap()
}

/// Kill a writer with SIGKILL mid-batch, 50 times. After every kill:
/// every acknowledged entry is present with its content at its index, the
/// ledger verifies, and the next writer opens (discarding any torn tail).
#[test]
fn a_writer_killed_mid_batch_loses_no_acknowledged_entry() {
    let (_d, ws) = workspace();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut acked: Vec<(u64, String)> = Vec::new();
    for round in 0..50u64 {
        let mut child = lines_writer(&ws, true);
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            for i in 1..=200_000u64 {
                if writeln!(stdin, "round {round} line {i}").is_err() {
                    break; // the writer was killed
                }
            }
        });
        // Kill after a varying number of acknowledgements, while more are in flight.
        let want = 1 + (round * 37) % 300;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut got = 0;
        let mut line = String::new();
        while got < want {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let (index, n) = (v["index"].as_u64().unwrap(), v["line"].as_u64().unwrap());
            acked.push((index, format!("round {round} line {n}")));
            got += 1;
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the writer finished before it was killed"
        );
        drop(out);
        feeder.join().unwrap();

        let v = view(&ws, &rt);
        assert!(
            v.size() >= acked.len() as u64,
            "round {round}: size {} < {} acknowledged",
            v.size(),
            acked.len()
        );
        for (index, content) in &acked {
            let e = rt.block_on(v.entry(*index)).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&e),
                *content,
                "round {round}: entry {index}"
            );
        }
        kfm(&ws).args(["ledger", "verify"]).assert().success();
    }
    // A final writer opens over whatever the last kill left, and appends.
    kfm(&ws)
        .args(["ledger", "append", "-"])
        .write_stdin("after the storm")
        .assert()
        .success();
    kfm(&ws).args(["ledger", "verify"]).assert().success();
}

/// A second process appending while a writer runs goes through that
/// writer (its socket): both entries land, in one history, verified.
#[test]
fn a_second_appender_goes_through_the_running_writer() {
    let (_d, ws) = workspace();
    let mut first = lines_writer(&ws, false);
    let mut stdin = first.stdin.take().unwrap();
    writeln!(stdin, "first writer").unwrap();
    let mut out = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap(); // the first writer holds the ledger now
    kfm(&ws)
        .args(["ledger", "append", "-"])
        .write_stdin("second appender")
        .assert()
        .success();
    writeln!(stdin, "first writer again").unwrap();
    drop(stdin);
    assert!(first.wait().unwrap().success());
    kfm(&ws).args(["ledger", "verify"]).assert().success();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let v = view(&ws, &rt);
    let all: Vec<String> = (0..v.size())
        .map(|i| String::from_utf8(rt.block_on(v.entry(i)).unwrap()).unwrap())
        .collect();
    assert_eq!(
        all,
        ["first writer", "second appender", "first writer again"],
        "one history, in the order the writer took them"
    );
}

#[test]
fn tampering_fails_verify_with_exit_1_naming_the_file() {
    let (_d, ws) = workspace();
    let lines: String = (0..300).map(|i| format!("{{\"event\":{i}}}\n")).collect();
    kfm(&ws)
        .args(["ledger", "append", "--lines"])
        .write_stdin(lines)
        .assert()
        .success();
    kfm(&ws)
        .args(["ledger", "verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains("300 entries"));
    let bundle = ws.join("store/audit/tile/entries/000");
    let original = std::fs::read(&bundle).unwrap();
    let mut bad = original.clone();
    bad[100] ^= 0x01;
    std::fs::write(&bundle, &bad).unwrap();
    kfm(&ws)
        .args(["ledger", "verify"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("tile/entries/000"));
    std::fs::write(&bundle, &original).unwrap();
    let cp = ws.join("store/audit/checkpoint");
    let original = std::fs::read(&cp).unwrap();
    let mut bad = original.clone();
    bad[original.len() - 10] ^= 0x01;
    std::fs::write(&cp, &bad).unwrap();
    kfm(&ws)
        .args(["ledger", "verify"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("checkpoint"));
    std::fs::write(&cp, &original).unwrap();
    kfm(&ws).args(["ledger", "verify"]).assert().success();
    // Proofs and bad input.
    kfm(&ws)
        .args(["ledger", "prove", "299"])
        .assert()
        .success()
        .stdout(predicate::str::contains("verified"));
    kfm(&ws).args(["ledger", "prove", "300"]).assert().code(2);
    kfm(&ws)
        .args(["ledger", "consistency", "1", "300"])
        .assert()
        .success();
    kfm(&ws)
        .args(["ledger", "consistency", "300", "1"])
        .assert()
        .code(2);
    let big = ws.join("big.bin");
    std::fs::write(&big, vec![b'x'; 70_000]).unwrap();
    kfm(&ws)
        .args(["ledger", "append", "big.bin"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("70000 bytes refused")
                .and(predicate::str::contains("by digest")),
        );
}

/// Entries still only in the journal (a writer killed before writing tiles)
/// are verified too: damage in a journal record that an intact record
/// follows is reported as such.
#[test]
fn damage_in_the_journal_fails_verify() {
    let (_d, ws) = workspace();
    let mut child = lines_writer_with(&ws, true, &[("KFM_LEDGER_TILE_INTERVAL_MS", "3600000")]);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // Two batches, acknowledged one after the other; tiles are not written
    // for an hour: both live only in the journal.
    let mut sizes = std::collections::BTreeSet::new();
    let mut line = String::new();
    for i in 0..2 {
        writeln!(stdin, "journal entry {i}").unwrap();
        stdin.flush().unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        sizes.insert(v["size"].as_u64().unwrap());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(sizes.len(), 2);
    kfm(&ws)
        .args(["ledger", "verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains("2 entries"));

    let journal = ws.join("store/.kfm-journal/audit.journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[50] ^= 0x01; // inside the first record's payload
    std::fs::write(&journal, &bytes).unwrap();
    kfm(&ws)
        .args(["ledger", "verify"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("journal record at bytes 0.."));
}

/// Appends `n` lines one at a time (each acknowledged before the next is
/// sent: one journal record per write) with tiles held back, then kills
/// the writer: those entries live only in the journal.
fn journal_only(ws: &Path, n: u64) {
    let mut child = lines_writer_with(ws, true, &[("KFM_LEDGER_TILE_INTERVAL_MS", "3600000")]);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for i in 0..n {
        writeln!(stdin, "journal entry {i}").unwrap();
        stdin.flush().unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert!(line.contains("\"index\""), "{line}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn append_lines(ws: &Path, from: u64, n: u64) {
    let input: String = (from..from + n).map(|i| format!("entry {i}\n")).collect();
    kfm(ws)
        .args(["ledger", "append", "--lines"])
        .write_stdin(input)
        .assert()
        .success();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (p, t) = (e.path(), to.join(e.file_name()));
        if p.is_dir() {
            copy_dir(&p, &t);
        } else if p.is_file() {
            // (A killed writer's socket, run/ledger.sock, is not a file to
            // copy, and a new writer replaces it.)
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

/// The ledger cannot shrink or vanish unnoticed. From one ledger (300
/// entries, then 200 more, then 40 acknowledged entries only in the
/// journal), each way of erasing part of it gives a `ledger verify` that
/// exits 1 naming the cause, no writer starts (`ledger append` exits 1),
/// nothing is deleted or changed, and an auditor who kept an earlier
/// checkpoint is refused by `verify --against` on every rollback.
#[test]
fn the_ledger_deletion_table() {
    let (_d, base) = workspace();
    append_lines(&base, 0, 300);
    let kept_old = base.join("kept-300");
    std::fs::copy(base.join("store/audit/checkpoint"), &kept_old).unwrap();
    let old_audit = tempfile::tempdir().unwrap();
    copy_dir(&base.join("store/audit"), old_audit.path());
    append_lines(&base, 300, 200);
    let kept = base.join("kept-500");
    std::fs::copy(base.join("store/audit/checkpoint"), &kept).unwrap();
    journal_only(&base, 40);
    kfm(&base)
        .args(["ledger", "verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains("540 entries"));
    for k in [&kept_old, &kept] {
        kfm(&base)
            .args(["ledger", "verify", "--against"])
            .arg(k)
            .assert()
            .success()
            .stdout(predicate::str::contains("extends the kept checkpoint"));
    }
    let journal_rel = "store/.kfm-journal/audit.journal";
    let journal = std::fs::read(base.join(journal_rel)).unwrap();
    let record = |k: usize| k * 4096; // one write per acknowledgement

    type Mutation = Box<dyn Fn(&Path)>;
    let rm = |rel: &'static str| -> Mutation {
        Box::new(move |ws: &Path| {
            let p = ws.join(rel);
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        })
    };
    let mut cases: Vec<(String, Mutation, &str, bool)> = vec![
        (
            "checkpoint deleted".into(),
            rm("store/audit/checkpoint"),
            "no checkpoint",
            true,
        ),
        (
            "audit zone deleted".into(),
            rm("store/audit"),
            "entries 0..500 are missing",
            true,
        ),
        (
            "audit zone restored from an older copy".into(),
            Box::new({
                let old = old_audit.path().to_path_buf();
                move |ws: &Path| {
                    std::fs::remove_dir_all(ws.join("store/audit")).unwrap();
                    copy_dir(&old, &ws.join("store/audit"));
                }
            }),
            "entries 300..500 are missing",
            true,
        ),
        (
            "audit zone and journal restored older, witness deleted".into(),
            Box::new({
                let old = old_audit.path().to_path_buf();
                move |ws: &Path| {
                    std::fs::remove_dir_all(ws.join("store/audit")).unwrap();
                    copy_dir(&old, &ws.join("store/audit"));
                    std::fs::remove_dir_all(ws.join("store/.kfm-journal")).unwrap();
                    std::fs::remove_dir_all(ws.join("ledger-witness")).unwrap();
                }
            }),
            // Nothing in the workspace vouches for more: only the auditor's
            // kept checkpoint catches this one.
            "",
            true,
        ),
        (
            "entry bundle deleted".into(),
            rm("store/audit/tile/entries/000"),
            "tile/entries/000: missing",
            false,
        ),
        (
            "hash tile deleted".into(),
            rm("store/audit/tile/0/000"),
            "tile/0/000: missing",
            false,
        ),
        (
            "journal deleted".into(),
            rm(journal_rel),
            "journal is missing",
            false,
        ),
        (
            "journal zeroed".into(),
            Box::new(move |ws: &Path| {
                std::fs::write(ws.join(journal_rel), vec![0u8; 1 << 20]).unwrap()
            }),
            "holds no record beyond entry 500",
            false,
        ),
        (
            "journal truncated".into(),
            Box::new({
                let j = journal.clone();
                move |ws: &Path| {
                    std::fs::write(ws.join(journal_rel), &j[..record(25) + 10]).unwrap()
                }
            }),
            "entries 525..540",
            false,
        ),
    ];
    for k in 0..40 {
        let j = journal.clone();
        let want = if k == 39 {
            "covers 540"
        } else {
            "is damaged: an intact record follows"
        };
        cases.push((
            format!("journal record {k} with one byte flipped"),
            Box::new(move |ws: &Path| {
                let mut b = j.clone();
                b[record(k) + 45] ^= 0x04;
                std::fs::write(ws.join(journal_rel), b).unwrap();
            }),
            want,
            false,
        ));
    }
    for (what, mutate, cause, rollback) in &cases {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        copy_dir(&base, &ws);
        mutate(&ws);
        let before = kfm_store::testing::snapshot(&ws);
        if cause.is_empty() {
            // Consistent with itself: a plain verify cannot tell.
            kfm(&ws).args(["ledger", "verify"]).assert().success();
        } else {
            let out = kfm(&ws).args(["ledger", "verify"]).assert().code(1);
            let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
            assert!(err.contains(cause), "{what}: {cause:?} not in: {err}");
            kfm(&ws)
                .args(["ledger", "append"])
                .write_stdin("a writer must not start")
                .assert()
                .code(1);
            assert!(
                kfm_store::testing::snapshot(&ws) == before,
                "{what}: something was changed"
            );
        }
        if *rollback || cause.is_empty() {
            kfm(&ws)
                .args(["ledger", "verify", "--against"])
                .arg(ws.join("kept-500"))
                .assert()
                .code(1);
        }
    }
}
