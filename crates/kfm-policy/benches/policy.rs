//! Policy decision figures (issue #4), ours and the naive anchor in one run.
//!
//! Criterion measures the mean cost of one decision of the default bundle
//! for three engine strategies:
//! - `pool`: what [`DecisionPoint`] does (the bundle compiled once to
//!   regorus VM bytecode; a VM with program and data loaded is borrowed
//!   from a pool, the input set, the entry point run, the VM returned);
//! - `interpreter_clone_per_call`: regorus's tree-walking interpreter,
//!   prepared once and cloned for every decision;
//! - `fresh_engine`: parse and prepare the bundle for every decision (what
//!   a naive integration does): the anchor.
//!
//! After criterion, a fixed run records every decision's latency on 1 and
//! on 2 threads and prints decisions/s, p50 and p99, and the ratio to the
//! anchor. Inputs cycle through every fixture of the default bundle, so
//! allows and denies, obligations and waivers are all in the mix.
//!
//! Run: `cargo bench -p kfm-policy --bench policy` (or `bench/policy.sh`).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use kfm_policy::{Bundle, DecisionPoint, Options};

fn bundle() -> Bundle {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy");
    Bundle::load(&dir).expect("the default bundle loads")
}

fn inputs(b: &Bundle) -> Vec<serde_json::Value> {
    kfm_policy::runner::fixtures(b)
        .expect("fixtures parse")
        .into_iter()
        .map(|(_, f)| f.input)
        .collect()
}

/// A fresh engine with the bundle loaded: the naive path.
fn fresh_engine(b: &Bundle) -> regorus::Engine {
    let mut e = regorus::Engine::new();
    e.set_strict_builtin_errors(false);
    for m in b.modules() {
        e.add_policy(m.path.to_owned(), m.source.to_owned())
            .expect("parses");
    }
    e.add_data(regorus::Value::from(b.data().clone()))
        .expect("data");
    e
}

fn eval(e: &mut regorus::Engine, input: &serde_json::Value) -> regorus::Value {
    e.set_input(regorus::Value::from(input.clone()));
    e.eval_rule(kfm_policy::DEFAULT_ENTRYPOINT.to_owned())
        .unwrap_or(regorus::Value::Undefined)
}

fn strategies(c: &mut Criterion) {
    let b = bundle();
    let inputs = inputs(&b);
    let point = DecisionPoint::new(&b, Options::default()).expect("prepares");
    let mut prepared = fresh_engine(&b);
    eval(&mut prepared, &inputs[0]);

    let mut g = c.benchmark_group("decision");
    let mut i = 0usize;
    g.bench_function("pool", |bench| {
        bench.iter(|| {
            i = (i + 1) % inputs.len();
            point.decide(&inputs[i])
        })
    });
    g.bench_function("interpreter_clone_per_call", |bench| {
        bench.iter(|| {
            i = (i + 1) % inputs.len();
            let mut e = prepared.clone();
            eval(&mut e, &inputs[i])
        })
    });
    g.sample_size(20);
    g.bench_function("fresh_engine", |bench| {
        bench.iter(|| {
            i = (i + 1) % inputs.len();
            let mut e = fresh_engine(&b);
            eval(&mut e, &inputs[i])
        })
    });
    g.finish();
}

criterion_group!(benches, strategies);

struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// `threads` threads share one decision point for `per_thread` decisions
/// each; every decision's latency is recorded.
fn latency_run(
    point: &DecisionPoint,
    inputs: &[serde_json::Value],
    threads: usize,
    per_thread: usize,
) -> Figures {
    let start = Instant::now();
    let mut all: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per_thread);
                    for k in 0..per_thread {
                        let input = &inputs[(k + t * 7) % inputs.len()];
                        let t0 = Instant::now();
                        std::hint::black_box(point.decide(input));
                        lat.push(t0.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let wall = start.elapsed();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        per_sec: all.len() as f64 / wall.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn figures() {
    let b = bundle();
    let inputs = inputs(&b);
    let point = DecisionPoint::new(&b, Options::default()).expect("prepares");
    let n: usize = std::env::var("KFM_BENCH_DECISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    latency_run(&point, &inputs, 1, n / 10); // warm the pool and caches
    let one = latency_run(&point, &inputs, 1, n);
    let two = latency_run(&point, &inputs, 2, n / 2);

    // The anchor: a fresh engine per decision, same inputs, 1 thread.
    let m = (n / 100).max(200);
    let start = Instant::now();
    for k in 0..m {
        let mut e = fresh_engine(&b);
        std::hint::black_box(eval(&mut e, &inputs[k % inputs.len()]));
    }
    let naive_per_sec = m as f64 / start.elapsed().as_secs_f64();

    println!();
    println!(
        "policy decisions, default bundle, {} distinct inputs",
        inputs.len()
    );
    println!(
        "{:<28} {:>14} {:>10} {:>10}",
        "", "decisions/s", "p50", "p99"
    );
    for (name, f) in [("kfm pool, 1 thread", &one), ("kfm pool, 2 threads", &two)] {
        println!(
            "{name:<28} {:>14.0} {:>8.1}µs {:>8.1}µs",
            f.per_sec,
            f.p50.as_secs_f64() * 1e6,
            f.p99.as_secs_f64() * 1e6
        );
    }
    println!("{:<28} {naive_per_sec:>14.0}", "fresh engine per call");
    println!(
        "ratio kfm(1 thread) / fresh engine: {:.0}x; goal: p99 < 50µs and >= 100000/s",
        one.per_sec / naive_per_sec
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Criterion runs each benchmark once under `cargo test`; the latency
    // run is for `cargo bench` only.
    if std::env::args().any(|a| a == "--bench") {
        figures();
    }
}
