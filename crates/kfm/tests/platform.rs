//! One workspace, many processes: promotions while serving, several
//! servers on one ledger, and a server that takes over as the ledger's
//! writer when the one that was dies.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, get, kfm, leaf_counts, samples_promoted, token};

fn version_served(addr: &str) -> String {
    let r = get(addr, "/collections/ks-places/items?limit=1", None, &[]);
    r.json()["kfm:version_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn verify(ws: &Path) {
    let o = kfm(ws, &["ledger", "verify"]);
    assert!(
        o.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// While a server runs, a promotion of the same workspace succeeds (its
/// receipt and manifest reach the ledger through the server), the server
/// serves the new version as soon as the pointer moves (announced, not
/// polled: its periodic check is 30 s), and every audit reference handed
/// out resolves.
#[test]
fn a_promotion_while_serving_is_published_served_and_audited() {
    let (_d, ws) = samples_promoted();
    let auditor = token(&ws, "auditor", &[]);
    let server = Server::start(&ws, &[]).unwrap();
    let a = server.addr.clone();
    let mut refs = Vec::new();
    let r = get(&a, "/collections/ks-places/items?limit=1", None, &[]);
    refs.push(r.audit_ref());
    assert_eq!(r.json()["kfm:version_id"], "ks-places@v1");

    let o = kfm(&ws, &["promote", "ks-places"]);
    assert!(
        o.status.success(),
        "promote while serving: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !ws.join("store/quarantine/ks-places").exists()
            || std::fs::read_dir(ws.join("store/quarantine/ks-places"))
                .unwrap()
                .next()
                .is_none(),
        "a promotion while serving must not be quarantined"
    );
    let moved = Instant::now();
    // A bound on the wait, not an assertion on speed (the figure is in
    // bench/platform.sh).
    let mut served_after = None;
    while moved.elapsed() < Duration::from_secs(25) {
        let r = get(&a, "/collections/ks-places/items?limit=1", None, &[]);
        refs.push(r.audit_ref());
        if r.json()["kfm:version_id"] == "ks-places@v2" {
            served_after = Some(moved.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let served_after = served_after.expect("the new version was never served (no event?)");
    eprintln!("served v2 {served_after:?} after the promotion returned");

    // A rollback while serving too.
    let o = kfm(&ws, &["rollback", "ks-places", "--to", "v1"]);
    assert!(
        o.status.success(),
        "rollback while serving: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(common::eventually(Duration::from_secs(25), || {
        version_served(&a) == "ks-places@v1"
    }));
    for r in &refs {
        let got = get(&a, &format!("/audit/{r}"), Some(&auditor), &[]);
        assert_eq!(got.status, 200, "audit ref {r}: {}", got.text());
    }
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
    verify(&ws);
}

type Refs = Vec<(usize, String)>;

/// Starts `threads` load threads against `addrs` until `stop`; collects the
/// audit reference of every 200 answer with the index of the server that
/// gave it, and counts other answers.
fn load(
    addrs: Vec<String>,
    threads: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<(Refs, usize)>> {
    (0..threads)
        .map(|t| {
            let addrs = addrs.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut refs = Vec::new();
                let mut other = 0;
                let mut i = t;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = i % addrs.len();
                    i += 1;
                    match std::panic::catch_unwind(|| {
                        get(&addrs[n], "/collections/ks-places/items?limit=2", None, &[])
                    }) {
                        Ok(r) if r.status == 200 => refs.push((n, r.audit_ref())),
                        Ok(r) => {
                            if other == 0 {
                                eprintln!("server {n}: {} {}", r.status, r.text());
                            }
                            other += 1;
                        }
                        Err(_) => other += 1,
                    }
                }
                (refs, other)
            })
        })
        .collect()
}

fn collect(h: Vec<std::thread::JoinHandle<(Refs, usize)>>) -> (Refs, usize) {
    let mut refs = Vec::new();
    let mut other = 0;
    for h in h {
        let (r, o) = h.join().unwrap();
        refs.extend(r);
        other += o;
    }
    (refs, other)
}

/// Two servers on one workspace both serve and audit under load; then the
/// writer among them is killed with SIGKILL and the other takes over as the
/// ledger's writer without a restart. Every audit reference the surviving
/// server returned, before and after, is in the ledger exactly once (its
/// appends that the killed writer never answered are resent and recorded
/// once); the killed one's are there at most once (a public read's record
/// still in its group commit dies with it, the loss window the API
/// documents).
#[test]
fn two_servers_share_one_ledger_and_survive_the_writer_being_killed() {
    let (_d, ws) = samples_promoted();
    let first = Server::start(&ws, &[]).unwrap();
    let second = Server::start(&ws, &[]).unwrap();
    let both = vec![first.addr.clone(), second.addr.clone()];

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = load(both, 4, stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut refs, other) = collect(h);
    assert_eq!(other, 0, "both servers answer every request");
    for n in 0..2 {
        let k = refs.iter().filter(|(s, _)| *s == n).count();
        assert!(k > 50, "server {n} answered only {k}");
    }

    // The first server opened the ledger first: it is the writer. Kill it
    // while the second is under load.
    let mut first = first;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = load(vec![second.addr.clone()], 4, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status();
    let _ = first.child.wait();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (after, other) = collect(h);
    assert_eq!(
        other, 0,
        "the surviving server answers every request while it takes over"
    );
    refs.extend(after.into_iter().map(|(_, r)| (1, r)));
    // After the takeover the survivor is the writer and keeps auditing.
    let late: Vec<String> = (0..20)
        .map(|_| {
            get(
                &second.addr,
                "/collections/ks-places/items?limit=1",
                None,
                &[],
            )
            .audit_ref()
        })
        .collect();
    refs.extend(late.into_iter().map(|r| (1, r)));
    let (code, out) = second.stop();
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("panicked"), "{out}");
    verify(&ws);
    let counts = leaf_counts(&ws);
    let mut lost_with_the_writer = 0;
    for (n, r) in &refs {
        match (n, counts.get(r).copied().unwrap_or(0)) {
            (_, 1) => {}
            (0, 0) => lost_with_the_writer += 1,
            (n, k) => panic!("server {n}'s audit ref {r} is in the ledger {k} times"),
        }
    }
    eprintln!(
        "{} answers; {lost_with_the_writer} public-read records of the killed writer were still in its group commit",
        refs.len()
    );
}

/// A promotion or rollback that cannot reach the ledger (its writer is
/// paused: it holds the lock and the socket but answers nothing) is
/// "cannot evaluate": exit 2, a message saying so, nothing written to the
/// store and no quarantine report. Once the writer runs again, the same
/// promotion goes through it.
#[test]
fn a_promotion_that_cannot_reach_the_ledger_writes_nothing_and_exits_2() {
    use std::io::{BufRead, BufReader, Write};
    let (_d, ws) = samples_promoted();
    let mut writer = Command::new(common::bin())
        .current_dir(&ws)
        .env("KFM_WORKSPACE", &ws)
        .args(["ledger", "append", "--lines"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    writeln!(stdin, "the writer holds the ledger").unwrap();
    let mut out = BufReader::new(writer.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid = writer.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );

    let before = kfm_store::testing::snapshot(&ws.join("store"));
    for args in [
        vec!["promote", "ks-places"],
        vec!["rollback", "ks-places", "--to", "v1"],
    ] {
        let o = Command::new(common::bin())
            .current_dir(&ws)
            .env("KFM_WORKSPACE", &ws)
            .env("KFM_LEDGER_REACH_WRITER_S", "2")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("cannot evaluate"), "{args:?}: {err}");
        assert!(err.contains("ledger"), "{args:?}: {err}");
        assert_eq!(
            kfm_store::testing::snapshot(&ws.join("store")),
            before,
            "{args:?} wrote to the store"
        );
    }

    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let o = kfm(&ws, &["promote", "ks-places"]);
    assert!(
        o.status.success(),
        "once the writer answers: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(stdin);
    assert!(writer.wait().unwrap().success());
    verify(&ws);
}
