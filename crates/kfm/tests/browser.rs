//! The map in a real browser: Debian's Chromium, driven by playwright-core
//! (`web/tests/map.mjs`), against a running `kfm serve`. Skipped with a
//! message when node, chromium or playwright-core is missing, unless
//! KFM_REQUIRE_SERVICES=1 (`scripts/test` installs playwright-core into
//! web/node_modules; `.ci/run` installs chromium).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Server, samples_promoted, token};

fn web() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

fn browser_available() -> bool {
    let chromium = std::env::var("KFM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing = if Command::new("node").arg("--version").output().is_err() {
        Some("node".to_owned())
    } else if !std::path::Path::new(&chromium).exists() {
        Some(format!("{chromium} (apt-get install chromium)"))
    } else if !web().join("node_modules/playwright-core").exists() {
        Some("web/node_modules/playwright-core (cd web && npm ci)".to_owned())
    } else {
        None
    };
    if let Some(m) = missing {
        assert!(
            std::env::var("KFM_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "KFM_REQUIRE_SERVICES=1 but {m} is missing"
        );
        eprintln!("SKIPPED: {m} is missing");
        return false;
    }
    true
}

#[test]
fn the_map_draws_what_each_caller_may_see_and_talks_to_nothing_else() {
    if !browser_available() {
        return;
    }
    let (_d, ws) = samples_promoted();
    let researcher = token(&ws, "researcher", &["ks-sites-synthetic"]);
    let steward = token(&ws, "steward", &[]);
    let server = Server::start(&ws, &[]).unwrap();
    let shots = std::env::var("KFM_SCREENSHOTS").map_or_else(
        |_| std::env::temp_dir().join("kfm-screenshots"),
        PathBuf::from,
    );
    let o = Command::new("node")
        .current_dir(web())
        .arg("tests/map.mjs")
        .arg(format!("http://{}", server.addr))
        .arg(&researcher)
        .arg(&shots)
        .arg(&steward)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("map: {out}screenshots in {}", shots.display());
    assert!(o.status.success(), "the browser test failed:\n{err}\n{out}");
    let (code, log) = server.stop();
    assert_eq!(code, 0, "{log}");
}
