//! A real `kfm serve` against abusive clients and a hostile machine, on
//! 127.0.0.1, every wait bounded: idle and slowloris connections under a
//! low descriptor limit, a descriptor squeeze and a full disk under the
//! ledger writer (which must resume once they clear), and a writer that
//! gives up (which must turn `/healthz` unhealthy).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;
use common::*;

fn require_services() -> bool {
    std::env::var("KFM_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The server's descriptor limits (soft, hard), from /proc.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

fn set_soft_nofile(pid: u32, soft: u64, hard: u64) {
    let ok = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit --pid failed");
}

/// `kfm ledger prove` finds each audit reference: the records are in the
/// ledger.
fn assert_recorded(ws: &Path, refs: &[String]) {
    for r in refs {
        let o = kfm(ws, &["ledger", "prove", r]);
        assert!(
            o.status.success(),
            "audit ref {r} not in the ledger: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = kfm(ws, &["ledger", "verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// 300 idle and 300 slowloris connections against a server whose
/// descriptor limit is 256: the server caps its connections below the
/// limit (keeping descriptors for the ledger and the store), closes every
/// one that does not deliver a request head within its header timeout, and
/// normal requests are answered and audited meanwhile.
#[test]
fn idle_and_slowloris_connections_cannot_exhaust_the_server() {
    let (_d, ws) = samples_promoted();
    let server = Server::start_wrapped(
        &ws,
        &[("KFM_SERVER_HEADER_TIMEOUT_S", "2")],
        &["prlimit", "--nofile=256:256", "--"],
    )
    .unwrap();
    let addr = server.addr.clone();
    assert_eq!(nofile(server.pid()).0, 256);
    let metrics = get(&addr, "/metrics", None, &[]).text();
    assert!(
        metrics.contains("kfm_http_connection_limit 128"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("connection"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /collections HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for s in &mut slow {
                    let _ = s.write(b"a");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    // Normal requests, while the attack holds: answered and audited.
    let mut refs = Vec::new();
    for _ in 0..5 {
        let r = get(&addr, "/collections/ks-places/items?limit=5", None, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        refs.push(r.audit_ref());
    }
    let h = get(&addr, "/healthz", None, &[]).json();
    assert_eq!(h["status"], "ok", "{h}");
    assert!(h["tiles_retrying"].is_null(), "{h}");
    // The server closed the idle connections it had accepted (EOF), or
    // never accepted them; none is held past the header timeout once
    // accepted, so all of them end.
    let mut closed = 0;
    for mut s in idle.into_iter().take(50) {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = [0u8; 64];
        if matches!(s.read(&mut b), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 50, "idle connections were held open");
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    assert!(open_fds(server.pid()) < 256);
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("access record(s) durable in the ledger") && !out.contains("NOT recorded"),
        "{out}"
    );
    assert_recorded(&ws, &refs);
}

/// Squeezes the server's descriptors (soft limit at what it holds) while
/// requests arrive over a connection it already accepted: the ledger's
/// tile writer meets EMFILE, keeps every acknowledged entry in its journal,
/// says so on /healthz, and resumes once the limit is lifted.
/// Governed reads, each answered 200 and its audit reference kept, until
/// `/healthz` says the tile writer is retrying after an error containing
/// `error` (false if it never does within a minute).
fn read_until_tiles_retry(k: &mut KeepAlive, refs: &mut Vec<String>, error: &str) -> bool {
    eventually(Duration::from_secs(60), || {
        let r = k.get("/collections/ks-places/items?limit=2", None).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        refs.push(r.audit_ref());
        let h = k.get("/healthz", None).unwrap().json();
        h["tiles_retrying"]
            .as_str()
            .is_some_and(|e| e.contains(error))
    })
}

#[test]
fn the_ledger_writer_rides_out_a_descriptor_squeeze() {
    let (_d, ws) = samples_promoted();
    let server = Server::start(&ws, &[]).unwrap();
    let pid = server.pid();
    let (soft, hard) = nofile(pid);
    let mut k = KeepAlive::connect(&server.addr);
    assert_eq!(k.get("/healthz", None).unwrap().status, 200);
    set_soft_nofile(pid, open_fds(pid), hard);
    let mut refs = Vec::new();
    let squeezed = read_until_tiles_retry(&mut k, &mut refs, "Too many open files");
    assert!(squeezed, "the tile writer never met EMFILE");
    set_soft_nofile(pid, soft, hard);
    let resumed = eventually(Duration::from_secs(60), || {
        let r = k.get("/collections/ks-places/items?limit=2", None).unwrap();
        refs.push(r.audit_ref());
        let h = k.get("/healthz", None).unwrap().json();
        h["status"] == "ok" && h["tiles_retrying"].is_null()
    });
    assert!(resumed, "the tile writer did not resume");
    drop(k);
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
    assert_recorded(&ws, &refs);
}

/// A small tmpfs mounted for the test, unmounted when dropped (before its
/// mount point, the temporary directory, is removed).
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(mb: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.path().to_path_buf(), dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `path` (a file of zeros until ENOSPC).
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    let small = [0u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

/// The store on a small tmpfs, filled: the tile writer meets ENOSPC,
/// answers stay audited (the journal is preallocated), and it resumes once
/// space is freed. Filled again past `ledger.give_up_after_s`, the writer
/// gives up: /healthz answers 503 (so an orchestrator restarts the
/// process), governed answers 503, and a restart with space recovers every
/// acknowledged record.
#[test]
fn a_full_disk_is_ridden_out_and_a_writer_that_gives_up_turns_unhealthy() {
    let Some(fs) = Tmpfs::mount(320) else {
        assert!(
            !require_services(),
            "KFM_REQUIRE_SERVICES=1 but a tmpfs cannot be mounted here (the test needs root)"
        );
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let o = std::process::Command::new(bin())
        .current_dir(&fs.0)
        .args(["up", "--dir", "ws", "--no-serve"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let ws = fs.0.join("ws");
    let filler = fs.0.join("filler");
    let env = [("KFM_LEDGER_GIVE_UP_AFTER_S", "8")];
    let server = Server::start(&ws, &env).unwrap();
    let mut k = KeepAlive::connect(&server.addr);
    let mut refs = Vec::new();
    // Phase 1: full, then freed before the writer gives up.
    fill(&filler);
    let full = read_until_tiles_retry(&mut k, &mut refs, "No space left");
    assert!(full, "the tile writer never met ENOSPC");
    std::fs::remove_file(&filler).unwrap();
    let resumed = eventually(Duration::from_secs(60), || {
        let h = k.get("/healthz", None).unwrap().json();
        h["status"] == "ok" && h["tiles_retrying"].is_null()
    });
    assert!(
        resumed,
        "the tile writer did not resume after space was freed"
    );

    // Phase 2: full for longer than the writer's patience.
    fill(&filler);
    let gave_up = eventually(Duration::from_secs(90), || {
        if let Ok(r) = k.get("/collections/ks-places/items?limit=2", None)
            && r.status == 200
        {
            refs.push(r.audit_ref());
        }
        k.get("/healthz", None).is_ok_and(|h| h.status == 503)
    });
    assert!(gave_up, "/healthz never turned unhealthy");
    let r = k.get("/collections/ks-places/items?limit=2", None).unwrap();
    assert_eq!(r.status, 503, "a governed answer after the writer gave up");
    drop(k);
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("its writer had failed"), "{out}");

    // Space back, a new process: every acknowledged record is there.
    std::fs::remove_file(&filler).unwrap();
    let server = Server::start(&ws, &env).unwrap();
    assert_eq!(get(&server.addr, "/readyz", None, &[]).status, 200);
    let (code, _) = server.stop();
    assert_eq!(code, 0);
    assert_recorded(&ws, &refs);
    drop(fs);
}

/// A large export to a client that stops reading: shutdown waits at most
/// its drain deadline, closes the connection, exits 0 and says what it
/// closed; the export's audit record was durable before its first byte.
#[test]
fn an_export_to_a_client_that_stops_reading_does_not_hold_up_shutdown() {
    let (_d, ws) = samples_promoted();
    // Ten points with 400,000 distinct property names: a ~10 MB CSV,
    // more than socket buffers hold.
    let per = 40_000;
    let features: Vec<serde_json::Value> = (0..10)
        .map(|i| {
            let props: serde_json::Map<String, serde_json::Value> = (0..per)
                .map(|j| (format!("k{:07}", i * per + j), serde_json::json!("value")))
                .collect();
            serde_json::json!({"type": "Feature", "id": i + 1, "properties": props,
                "geometry": {"type": "Point", "coordinates": [-98.0 + f64::from(i) * 0.1, 38.5]}})
        })
        .collect();
    std::fs::write(
        ws.join("datasets/wide.geojson"),
        serde_json::to_vec(&serde_json::json!({"type": "FeatureCollection", "features": features}))
            .unwrap(),
    )
    .unwrap();
    std::fs::write(
        ws.join("datasets/wide.yaml"),
        "id: wide\ntitle: Wide\ndescription: Many properties.\npublisher: {name: KFM, url: \"https://kfm.example.org/\"}\ncontact: {name: S, email: s@example.org}\nsource: {uri: wide.geojson, format: geojson}\nlicense: {spdx: CC0-1.0, rights_holder: KFM}\nsensitivity: {policy_label: public}\nqa: {min_features: 10}\n",
    )
    .unwrap();
    for args in [&["ingest", "datasets/wide.yaml"][..], &["promote", "wide"]] {
        let o = kfm(&ws, args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
    let server = Server::start(&ws, &[("KFM_SERVER_DRAIN_S", "2")]).unwrap();
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(b"GET /collections/wide/export?format=csv HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 4096];
    s.read_exact(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("kfm-audit-ref"),
        "{head}"
    );
    // Stop reading; stop the server.
    let pid = server.pid();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("still running at the drain deadline were closed"),
        "{out}"
    );
    assert!(
        out.contains("access record(s) durable in the ledger"),
        "{out}"
    );
    drop(s);
}
