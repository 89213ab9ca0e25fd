//! Throughput of the event write path, against the broker's own ceiling
//! in the same run on the same server (run by `bench/events.sh`).
//!
//! 1. ceiling: `PRODUCERS` tasks publish `SIZE`-byte messages straight to
//!    a JetStream stream declared like KFM's audit stream (each awaits
//!    its acknowledgement, with a unique `Nats-Msg-Id`): async-nats alone.
//! 2. kfm: the same producers record `SIZE`-byte ledger entries through
//!    `Ledger::record` (envelope, identity, bounded in-flight acks):
//!    durable appends/s.
//! 3. sequencer: one sequencer integrates everything step 2 published
//!    into an empty ledger on a directory store: entries/s.
//!
//! Usage: events_bench [ENTRIES] (default 200000); NATS at
//! KFM_BENCH_NATS_URL or nats://127.0.0.1:4222.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use kfm_core::config::Environment;
use kfm_events::sequencer::{self, SequencerOptions, Stats};
use kfm_events::streams::{self, Declared};
use kfm_events::{JetStreamPublisher, Names};
use kfm_ledger::{Guards, Ledger, LedgerOptions, LedgerSigner, LocalLedger, generate_key};
use kfm_store::Store;

const PRODUCERS: usize = 64;
const SIZE: usize = 512;
const ORIGIN: &str = "kfm.bench/events";

fn entry(p: usize, i: usize) -> Vec<u8> {
    let head = format!("{{\"p\":{p},\"i\":{i},\"pad\":\"");
    let mut e = head.into_bytes();
    e.resize(SIZE - 2, b'x');
    e.extend_from_slice(b"\"}");
    e
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), async_nats::Error> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let per = n / PRODUCERS;
    let n = per * PRODUCERS;
    let url =
        std::env::var("KFM_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client.clone());
    let tag = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);

    // 1. The ceiling: a raw publish loop on a stream declared like KFM's.
    let raw = Names::with_prefix(Environment::Dev, &format!("{tag}raw"));
    streams::ensure(&js, &Declared::new(raw.clone(), 1)).await?;
    let subject = raw.audit_subject("kfm.ledger.entry.v1");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let js = js.clone();
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let mut h = async_nats::HeaderMap::new();
                h.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("{p}-{i}").as_str(),
                );
                let ack = js
                    .publish_with_headers(subject.clone(), h, Bytes::from(entry(p, i)))
                    .await?;
                ack.await?;
            }
            Ok::<_, async_nats::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ceiling = n as f64 / t0.elapsed().as_secs_f64();
    println!("ceiling (async-nats, {PRODUCERS} producers, {SIZE} B): {ceiling:.0} msgs/s");

    // 2. KFM's write path.
    let names = Names::with_prefix(Environment::Dev, &tag);
    streams::ensure(&js, &Declared::new(names.clone(), 1)).await?;
    let dir = tempfile::tempdir()?;
    let store = Store::open_local(&dir.path().join("store"))?;
    let (skey, vkey) = generate_key(ORIGIN)?;
    let mut opts = LedgerOptions::new(ORIGIN);
    opts.guards = Guards {
        witness: Some(dir.path().join("witness")),
        references: Vec::new(),
    };
    let publisher = JetStreamPublisher::new(client.clone(), names.clone(), "urn:kfm:bench", 4096);
    let ledger = Arc::new(Ledger::open_published(
        store.audit(),
        vkey.clone(),
        opts.clone(),
        Arc::new(publisher),
    ));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                ledger.record(entry(p, i)).await?;
            }
            Ok::<_, kfm_ledger::LedgerError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let kfm = n as f64 / t0.elapsed().as_secs_f64();
    println!("kfm durable appends ({PRODUCERS} producers, {SIZE} B entries): {kfm:.0} entries/s");
    println!("ratio kfm/ceiling: {:.2}x", kfm / ceiling);

    // 3. The sequencer, integrating the whole backlog.
    let stats = Arc::new(Stats::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let sopts = SequencerOptions::new(names.clone(), "bench");
    let audit = store.audit();
    let t0 = Instant::now();
    let (js2, s2) = (js.clone(), stats.clone());
    let run = tokio::spawn(async move {
        let open = || {
            let audit = audit.clone();
            let skey = skey.clone();
            let opts = opts.clone();
            async move { LocalLedger::open(audit, LedgerSigner::from_key_text(&skey)?, opts).await }
        };
        sequencer::run(&js2, &sopts, open, rx, s2).await
    });
    while stats.integrated.load(Ordering::Relaxed) < n as u64 {
        if run.is_finished() {
            return Err("the sequencer stopped".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seq = n as f64 / t0.elapsed().as_secs_f64();
    println!("sequencer integration: {seq:.0} entries/s ({n} entries, open included)");
    let _ = stop.send(true);
    run.await??;

    for s in [&raw, &names] {
        let _ = js.delete_stream(&s.audit_stream).await;
        let _ = js.delete_stream(&s.dead_stream).await;
        let _ = js.delete_stream(format!("KV_{}", s.bucket)).await;
    }
    Ok(())
}
