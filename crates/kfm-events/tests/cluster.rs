//! Against a 3-node JetStream cluster (started by `scripts/test` with
//! `scripts/nats-cluster`; KFM_TEST_NATS_CLUSTER, _CONFS, _PIDS): streams
//! with 3 replicas, as stage and prod require; the node leading the audit
//! stream is SIGKILLed under load, and every entry JetStream acknowledged
//! is integrated into the log exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use kfm_core::config::Environment;
use kfm_events::sequencer::{self, SequencerOptions, Stats};
use kfm_events::streams::{self, Declared};
use kfm_events::{JetStreamPublisher, Names};
use kfm_ledger::{Guards, Ledger, LedgerOptions, LedgerSigner, LocalLedger, generate_key};
use kfm_store::Store;

const ORIGIN: &str = "kfm.test/cluster";

struct Cluster {
    urls: String,
    confs: Vec<String>,
    pids: Vec<u32>,
}

fn cluster() -> Option<Cluster> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        var("KFM_TEST_NATS_CLUSTER"),
        var("KFM_TEST_NATS_CLUSTER_CONFS"),
        var("KFM_TEST_NATS_CLUSTER_PIDS"),
    ) {
        (Some(urls), Some(confs), Some(pids)) => Some(Cluster {
            urls,
            confs: confs.split(',').map(str::to_owned).collect(),
            pids: pids.split(',').filter_map(|p| p.parse().ok()).collect(),
        }),
        _ => {
            if std::env::var("KFM_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!(
                    "a 3-node NATS cluster is required (KFM_REQUIRE_SERVICES=1): run under scripts/test"
                );
            }
            eprintln!("skipping: no NATS cluster (KFM_TEST_NATS_CLUSTER); scripts/test starts one");
            None
        }
    }
}

fn entry(p: usize, i: usize) -> Vec<u8> {
    format!(
        "{{\"producer\":{p},\"i\":{i},\"pad\":\"{}\"}}",
        "x".repeat(200)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_under_load_loses_nothing_acknowledged() {
    let Some(c) = cluster() else { return };
    let urls: Vec<async_nats::ServerAddr> = c.urls.split(',').map(|u| u.parse().unwrap()).collect();
    let client = async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .connect(urls)
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    // The cluster's metadata leader may still be being elected.
    for _ in 0..200 {
        if js.query_account().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let prefix = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let names = Names::with_prefix(Environment::Stage, &prefix);
    let decl = Declared::new(names.clone(), 3);
    assert!(decl.durability().unwrap().is_none(), "3 replicas: durable");
    let mut ensured = Err(kfm_events::EventsError::Refused("not tried".into()));
    for _ in 0..50 {
        ensured = streams::ensure(&js, &decl).await;
        if ensured.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensured.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(&dir.path().join("store")).unwrap();
    let (skey, vkey) = generate_key(ORIGIN).unwrap();
    let mut opts = LedgerOptions::new(ORIGIN);
    opts.guards = Guards {
        witness: Some(dir.path().join("witness")),
        references: Vec::new(),
    };
    let stats = Arc::new(Stats::default());
    let (stop_seq, rx) = tokio::sync::watch::channel(false);
    let sopts = SequencerOptions::new(names.clone(), "s1");
    let (js2, s2, audit, o2, k2) = (
        js.clone(),
        stats.clone(),
        store.audit(),
        opts.clone(),
        skey.clone(),
    );
    let seq = tokio::spawn(async move {
        let open = || {
            let (audit, opts, skey) = (audit.clone(), o2.clone(), k2.clone());
            async move { LocalLedger::open(audit, LedgerSigner::from_key_text(&skey)?, opts).await }
        };
        sequencer::run(&js2, &sopts, open, rx, s2).await
    });

    let publisher = JetStreamPublisher::new(client.clone(), names.clone(), "urn:kfm:test", 256);
    let ledger = Arc::new(Ledger::open_published(
        store.audit(),
        vkey.clone(),
        opts.clone(),
        Arc::new(publisher),
    ));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..16 {
        let (ledger, acked, stop) = (ledger.clone(), acked.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                // An error is a publish never acknowledged: not counted.
                if let Ok(leaf) = ledger.record(entry(p, i)).await {
                    acked.lock().unwrap().push(leaf);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // SIGKILL the node that leads the audit stream.
    let mut s = js.get_stream(&names.audit_stream).await.unwrap();
    let info = s.info().await.unwrap();
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a replicated stream has a leader");
    let n: usize = leader.trim_start_matches('n').parse().unwrap();
    let before = acked.lock().unwrap().len();
    // The node as it runs now: a run before this one may have restarted it
    // (another pid, the same config).
    let pid = std::process::Command::new("pgrep")
        .args(["-f", &format!("nats-server -c {}$", c.confs[n - 1])])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        .unwrap_or(c.pids[n - 1]);
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    eprintln!("killed {leader} (pid {pid}) after {before} acknowledged entries");
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > before, "publishing went on after the kill");

    // Every acknowledged entry reaches the log, once.
    // The cluster may take a while to settle on two cores (every stream,
    // bucket and consumer elects anew): a generous bound on the wait.
    let total = acked.len() as u64;
    let waited = std::time::Instant::now();
    for _ in 0..3600 {
        if stats.integrated.load(Ordering::Relaxed) >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{} acknowledged, {} integrated ({:?} after the load stopped), {} duplicates skipped, {} dead-lettered, \
         {} skipped by the consumer and fetched by number",
        total,
        stats.integrated.load(Ordering::Relaxed),
        waited.elapsed(),
        stats.duplicates.load(Ordering::Relaxed),
        stats.dead.load(Ordering::Relaxed),
        stats.refetched.load(Ordering::Relaxed)
    );
    // (If the sequencer ended by itself, its error is what to see.)
    let _ = stop_seq.send(true);
    seq.await.unwrap().unwrap();
    let l = LocalLedger::open(
        store.audit(),
        LedgerSigner::from_key_text(&skey).unwrap(),
        opts,
    )
    .await
    .unwrap();
    let mut counts: HashMap<kfm_ledger::Hash, usize> = HashMap::new();
    for i in 0..l.size() {
        *counts
            .entry(kfm_ledger::leaf_hash(&l.entry(i).await.unwrap()))
            .or_default() += 1;
    }
    l.close().await;
    let wrong: Vec<&kfm_ledger::Hash> = acked
        .iter()
        .filter(|a| counts.get(*a) != Some(&1))
        .collect();
    if !wrong.is_empty() {
        // Which side lost it: the stream, or the sequencer reading it.
        let in_stream = stream_leaves(&js, &names).await;
        let missing: Vec<_> = wrong.iter().filter(|a| !counts.contains_key(**a)).collect();
        let there = missing.iter().filter(|a| in_stream.contains(***a)).count();
        panic!(
            "{} acknowledged entries are not in the log exactly once: {} more than once, {} missing; \
             of the missing, {there} are in the stream (the sequencer skipped them) and {} are not \
             (JetStream acknowledged what it did not store)",
            wrong.len(),
            wrong.len() - missing.len(),
            missing.len(),
            missing.len() - there
        );
    }
    eprintln!("{} acknowledged, {} in the log", acked.len(), counts.len());

    // Put the node back for whoever runs next.
    let _ = std::process::Command::new("nats-server")
        .args(["-c", &c.confs[n - 1]])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    for st in [&names.audit_stream, &names.dead_stream] {
        let _ = js.delete_stream(st).await;
    }
    let _ = js.delete_stream(format!("KV_{}", names.bucket)).await;
}

/// Every entry the audit stream holds, read from its start.
async fn stream_leaves(
    js: &jetstream::Context,
    names: &Names,
) -> std::collections::HashSet<kfm_ledger::Hash> {
    use futures::StreamExt as _;
    let mut out = std::collections::HashSet::new();
    let Ok(stream) = js.get_stream(&names.audit_stream).await else {
        return out;
    };
    let Ok(c) = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
    else {
        return out;
    };
    let Ok(mut msgs) = c.messages().await else {
        return out;
    };
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), msgs.next()).await {
        if let Ok(checked) = kfm_events::envelope::check(&m.payload, None, Environment::Stage) {
            out.extend(checked.into_iter().map(|c| c.leaf));
        }
        if m.info().map(|i| i.pending == 0).unwrap_or(false) {
            break;
        }
    }
    out
}
