//! The distributed platform against the machine's NATS JetStream
//! (KFM_TEST_NATS_URL, default nats://127.0.0.1:4222): two `kfm serve`,
//! a `kfm promote` and two `kfm ledger sequencer` processes on one
//! workspace whose ledger entries travel through the stream. Rounds of
//! SIGKILL of the active sequencer under load; a paused sequencer that
//! resumes after the standby took over; a promotion with no JetStream is
//! "cannot evaluate". Each test uses its own stream names (events.prefix).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, bin, get, kfm, leaf_counts, samples_promoted};

fn nats_url() -> String {
    std::env::var("KFM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn nats_reachable() -> bool {
    let addr = nats_url()
        .trim_start_matches("nats://")
        .split(',')
        .next()
        .unwrap_or("")
        .to_owned();
    let ok = std::net::TcpStream::connect_timeout(
        &addr
            .parse()
            .unwrap_or_else(|_| "127.0.0.1:4222".parse().unwrap()),
        Duration::from_secs(2),
    )
    .is_ok();
    if !ok {
        if std::env::var("KFM_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!(
                "NATS at {} is required (KFM_REQUIRE_SERVICES=1)",
                nats_url()
            );
        }
        eprintln!("skipping: NATS at {} unreachable", nats_url());
    }
    ok
}

/// Points the workspace at the event backbone under a fresh prefix.
fn use_events(ws: &Path, url: &str) -> String {
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let path = ws.join("kfm.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        "# url = \"nats://127.0.0.1:4222\"",
        &format!("url = \"{url}\"\nprefix = \"{prefix}\""),
    );
    assert!(text.contains(&prefix));
    std::fs::write(&path, text).unwrap();
    prefix
}

/// A `kfm ledger sequencer` process; its stdout lines say when it becomes
/// active or stands by.
struct Sequencer {
    child: Child,
    state: Arc<Mutex<String>>,
    log: Arc<Mutex<String>>,
}

impl Sequencer {
    fn start(ws: &Path, holder: &str) -> Self {
        let mut child = Command::new(bin())
            .current_dir(ws)
            .env("KFM_WORKSPACE", ws)
            .env("KFM_LOG", "kfm_events=info,warn")
            .args([
                "ledger",
                "sequencer",
                "--holder",
                holder,
                "--lease-ms",
                "1000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let state = Arc::new(Mutex::new("starting".to_owned()));
        let log = Arc::new(Mutex::new(String::new()));
        let (s, l) = (state.clone(), log.clone());
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(e) = v["event"].as_str()
                {
                    *s.lock().unwrap() = e.to_owned();
                }
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let err = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Self { child, state, log }
    }

    fn active(&self) -> bool {
        *self.state.lock().unwrap() == "active"
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, bound: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < bound {
        if f() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out after {bound:?} waiting for {what}");
}

fn ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn cleanup(ws: &Path) {
    // The test's streams and bucket; names as `kfm events check` reports.
    let toml = std::fs::read_to_string(ws.join("kfm.toml")).unwrap();
    let prefix = toml
        .lines()
        .find_map(|l| l.strip_prefix("prefix = \""))
        .map(|p| p.trim_end_matches('"').to_ascii_uppercase())
        .unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        if let Ok(c) = async_nats::connect(nats_url()).await {
            let js = async_nats::jetstream::new(c);
            for s in [
                "KFM_AUDIT_DEV",
                "KFM_DEADLETTER_DEV",
                "KV_{p}KFM_SEQUENCER_DEV",
            ] {
                let name = if s.starts_with("KV_") {
                    s.replace("{p}", &prefix)
                } else {
                    format!("{prefix}{s}")
                };
                let _ = js.delete_stream(name).await;
            }
        }
    });
}

/// Two servers and two sequencers, a promotion, then 20 rounds of SIGKILL
/// of the active sequencer (the killed one restarts as the standby) under
/// load: every audit reference a server handed out is in the log exactly
/// once and `kfm ledger verify` passes.
#[test]
fn killing_the_active_sequencer_loses_and_duplicates_nothing() {
    if !nats_reachable() {
        return;
    }
    let (_d, ws) = samples_promoted();
    use_events(&ws, &nats_url());
    ok(&kfm(&ws, &["events", "ensure"]), "events ensure");
    let mut seqs = vec![Sequencer::start(&ws, "a"), Sequencer::start(&ws, "b")];
    wait_for("an active sequencer", Duration::from_secs(20), || {
        seqs.iter().any(Sequencer::active)
    });
    let s1 = Server::start(&ws, &[]).unwrap();
    let s2 = Server::start(&ws, &[]).unwrap();
    let addrs = vec![s1.addr.clone(), s2.addr.clone()];

    // Load: both servers, every audit ref kept.
    let refs = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for a in addrs.clone() {
        let (refs, stop) = (refs.clone(), stop.clone());
        load.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = get(&a, "/collections/ks-places/items?limit=2", None, &[]);
                if r.status == 200 {
                    refs.lock().unwrap().push(r.audit_ref());
                }
            }
        }));
    }

    // A promotion while serving: its receipt and manifest go through the
    // stream; both servers serve v2.
    ok(&kfm(&ws, &["promote", "ks-places"]), "promote with events");
    for a in &addrs {
        let a = a.clone();
        wait_for("v2 served", Duration::from_secs(30), move || {
            get(&a, "/collections/ks-places/items?limit=1", None, &[]).json()["kfm:version_id"]
                == "ks-places@v2"
        });
    }

    let rounds: usize = std::env::var("KFM_TEST_SEQUENCER_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let mut takeovers = Vec::new();
    for round in 0..rounds {
        let i = seqs
            .iter()
            .position(Sequencer::active)
            .unwrap_or_else(|| panic!("round {round}: no active sequencer"));
        seqs[i].signal("-KILL");
        let _ = seqs[i].child.wait();
        let other = 1 - i;
        let t = wait_for("the standby to take over", Duration::from_secs(30), || {
            seqs[other].active()
        });
        takeovers.push(t);
        seqs[i] = Sequencer::start(&ws, if i == 0 { "a" } else { "b" });
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    // The servers drain what they published, then the log catches up.
    let (c1, o1) = s1.stop();
    let (c2, o2) = s2.stop();
    assert_eq!((c1, c2), (0, 0), "graceful stops:\n{o1}\n{o2}");
    let refs = refs.lock().unwrap().clone();
    assert!(refs.len() > 100, "load ran: {} answers", refs.len());
    let last = refs.last().unwrap().clone();
    wait_for("the last ref sequenced", Duration::from_secs(30), || {
        leaf_counts(&ws).contains_key(&last)
    });
    let counts = leaf_counts(&ws);
    for r in &refs {
        assert_eq!(
            counts.get(r),
            Some(&1),
            "audit ref {r} must be in the log exactly once"
        );
    }
    assert!(counts.values().all(|&n| n == 1), "no entry twice");
    for s in &seqs {
        s.signal("-TERM");
    }
    for s in &mut seqs {
        let _ = s.child.wait();
    }
    ok(&kfm(&ws, &["ledger", "verify"]), "verify");
    takeovers.sort();
    eprintln!(
        "{} answers, {rounds} takeovers: p50 {:?}, max {:?}",
        refs.len(),
        takeovers.get(takeovers.len() / 2),
        takeovers.last()
    );
    cleanup(&ws);
}

/// A paused active sequencer (SIGSTOP) loses its lease; the standby takes
/// over and goes on; the paused one, resumed, stands by: its renewal is
/// refused before it writes. The log holds every entry once and verifies.
/// On a directory store the paused writer's lock keeps the standby from
/// writing meanwhile; on S3 the checkpoint's compare-and-swap is the
/// fence (`kfm-ledger`'s tests of a superseded writer).
#[test]
fn a_paused_sequencer_resumes_as_the_standby() {
    if !nats_reachable() {
        return;
    }
    let (_d, ws) = samples_promoted();
    use_events(&ws, &nats_url());
    ok(&kfm(&ws, &["events", "ensure"]), "events ensure");
    let a = Sequencer::start(&ws, "a");
    wait_for("a active", Duration::from_secs(20), || a.active());
    let b = Sequencer::start(&ws, "b");
    let append = |n: usize| {
        for i in 0..n {
            let mut c = Command::new(bin())
                .current_dir(&ws)
                .env("KFM_WORKSPACE", &ws)
                .args(["ledger", "append"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{{\"n\":{i},\"r\":\"{}\"}}", uuid::Uuid::new_v4()).as_bytes())
                .unwrap();
            let o = c.wait_with_output().unwrap();
            ok(&o, "ledger append");
        }
    };
    append(3);
    a.signal("-STOP");
    // Paused past its lease: b takes the lease (and, on this directory
    // store, waits for the lock a holds).
    std::thread::sleep(Duration::from_millis(2500));
    a.signal("-CONT");
    wait_for("b active", Duration::from_secs(30), || b.active());
    wait_for("a standing by", Duration::from_secs(30), || {
        *a.state.lock().unwrap() == "standby"
    });
    assert!(
        a.log().contains("no longer the active sequencer"),
        "the resumed one was refused its renewal: {}",
        a.log()
    );
    append(3);
    let counts = leaf_counts(&ws);
    assert!(counts.values().all(|&n| n == 1), "no entry twice");
    drop(a);
    drop(b);
    ok(&kfm(&ws, &["ledger", "verify"]), "verify");
    cleanup(&ws);
}

/// With the event backbone configured but unreachable, a promotion is
/// "cannot evaluate": exit 2, a message that says so, nothing written and
/// no quarantine report.
#[test]
fn a_promotion_without_jetstream_cannot_be_evaluated() {
    let (_d, ws) = samples_promoted();
    // Nothing listens on port 1.
    use_events(&ws, "nats://127.0.0.1:1");
    let before = leaf_counts(&ws).len();
    let o = kfm(&ws, &["promote", "ks-places"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot evaluate"), "{err}");
    assert!(err.contains("NATS"), "names what failed: {err}");
    let q: PathBuf = ws.join("store/quarantine/ks-places");
    assert!(
        !q.exists() || std::fs::read_dir(&q).unwrap().next().is_none(),
        "no quarantine report"
    );
    assert_eq!(leaf_counts(&ws).len(), before, "nothing written");
}
