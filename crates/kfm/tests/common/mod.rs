//! Helpers shared by the tests that drive a real `kfm serve` over HTTP.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub mod drift;
pub mod pg;
pub mod tiles;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kfm"))
}

pub fn kfm(ws: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .current_dir(ws)
        .env("KFM_WORKSPACE", ws)
        .env_remove("KFM_LOG")
        .args(args)
        .output()
        .unwrap()
}

pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn audit_ref(&self) -> String {
        self.headers
            .get("kfm-audit-ref")
            .cloned()
            .unwrap_or_else(|| panic!("no Kfm-Audit-Ref on a {} answer", self.status))
    }
}

/// Decodes a `Transfer-Encoding: chunked` body (streamed exports).
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&raw[..eol])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// A minimal HTTP/1.1 client (Content-Length or chunked bodies).
pub fn get(addr: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        dechunk(&raw[split + 4..])
    } else {
        raw[split + 4..].to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// A running `kfm serve`; its stdout and stderr are collected.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub output: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(ws: &Path, extra_env: &[(&str, &str)]) -> Result<Server, String> {
        Self::start_wrapped(ws, extra_env, &[])
    }

    /// [`Server::start`] under a wrapper command (`prlimit --nofile=…`).
    pub fn start_wrapped(
        ws: &Path,
        extra_env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Result<Server, String> {
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin()),
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(bin());
                c
            }
        };
        cmd.current_dir(ws)
            .env("KFM_WORKSPACE", ws)
            .env("KFM_LOG", "kfm_api=debug,info")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let o = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("serving the governed API on http://") {
                    let _ = tx.send(rest.split(' ').next().unwrap_or("").to_owned());
                }
                o.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let err = child.stderr.take().unwrap();
        let o = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                o.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Server {
                child,
                addr,
                output,
            }),
            Err(_) => {
                let status = child.wait().ok();
                std::thread::sleep(Duration::from_millis(200));
                Err(format!(
                    "server did not start ({status:?}): {}",
                    output.lock().unwrap()
                ))
            }
        }
    }

    /// The server process's id (under a wrapper that execs, the same).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait: graceful shutdown must exit 0.
    pub fn stop(mut self) -> (i32, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        std::thread::sleep(Duration::from_millis(200));
        let out = self.output.lock().unwrap().clone();
        (code, out)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

pub fn token(ws: &Path, role: &str, approve: &[&str]) -> String {
    let mut args = vec!["token", "create", "--role", role];
    for a in approve {
        args.extend(["--approve", a]);
    }
    let out = kfm(ws, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `kfm up --no-serve` in a fresh directory: the samples promoted in `ws/`.
pub fn samples_promoted() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .current_dir(dir.path())
        .args(["up", "--dir", "ws", "--no-serve"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ws = dir.path().join("ws");
    (dir, ws)
}

/// Reads one HTTP/1.1 response from a keep-alive stream.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<Resp> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if let Some(n) = headers.get("content-length") {
        let mut b = vec![0u8; n.parse().unwrap_or(0)];
        s.read_exact(&mut b)?;
        b
    } else {
        // Chunked: read chunk by chunk until the empty one.
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                s.read_exact(&mut byte)?;
                line.push(byte[0]);
            }
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&line[..line.len() - 2]).trim(), 16)
                    .map_err(std::io::Error::other)?;
            let mut chunk = vec![0u8; size + 2];
            s.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..size]);
        }
        out
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// One keep-alive connection: requests go over the same socket.
pub struct KeepAlive {
    s: TcpStream,
    addr: String,
}

impl KeepAlive {
    pub fn connect(addr: &str) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Self {
            s,
            addr: addr.to_owned(),
        }
    }

    pub fn get(&mut self, path: &str, token: Option<&str>) -> std::io::Result<Resp> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        self.s.write_all(req.as_bytes())?;
        read_response(&mut self.s)
    }
}

/// Polls `check` every 100 ms until it holds, for at most `bound` (a bound
/// on a wait, never an assertion on speed). Returns whether it held.
pub fn eventually(bound: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < bound {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// Every entry's leaf hash (hex) with how many times it occurs.
pub fn leaf_counts(ws: &Path) -> HashMap<String, usize> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = kfm_store::Store::open_local(&ws.join("store")).unwrap();
    let vkey = std::fs::read_to_string(ws.join("keys/ledger.pub")).unwrap();
    let guards = kfm_ledger::Guards {
        witness: Some(ws.join("ledger-witness/checkpoint")),
        references: Vec::new(),
    };
    let v = rt
        .block_on(kfm_ledger::LedgerView::open(
            &store.audit(),
            vkey.trim(),
            "kfm.local/dev",
            &guards,
        ))
        .unwrap();
    let mut counts = HashMap::new();
    for i in 0..v.size() {
        let e = rt.block_on(v.entry(i)).unwrap();
        *counts
            .entry(hex::encode(kfm_ledger::leaf_hash(&e)))
            .or_insert(0usize) += 1;
    }
    counts
}
