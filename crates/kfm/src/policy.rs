//! `kfm policy test|digest|pin|eval|diff|sign`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kfm_core::{Environment, EnvironmentPins, SecretRef};
use kfm_policy::runner::{TestOptions, TestReport};
use kfm_policy::{Bundle, DecisionPoint, Options, ParityError};
use serde::Serialize;

use crate::cli::{
    Format, PolicyCommand, PolicyDiffArgs, PolicyEvalArgs, PolicyPinArgs, PolicySignArgs,
    PolicyTestArgs,
};
use crate::failure::{EXIT_RULE, Failure};
use crate::output::print_json;
use crate::workspace::Workspace;

pub fn run(ws: Option<&Path>, cmd: &PolicyCommand, fmt: Format) -> Result<u8, Failure> {
    match cmd {
        PolicyCommand::Test(a) => test(ws, a, fmt),
        PolicyCommand::Digest(a) => digest(ws, a.dir.as_deref(), fmt),
        PolicyCommand::Pin(a) => pin(ws, a, fmt),
        PolicyCommand::Eval(a) => eval(ws, a, fmt),
        PolicyCommand::Diff(a) => diff(a, fmt),
        PolicyCommand::Sign(a) => sign(ws, a, fmt),
    }
}

impl From<kfm_policy::BundleError> for Failure {
    fn from(e: kfm_policy::BundleError) -> Self {
        let hint = e.hint();
        Failure::input(e.to_string()).hint(hint)
    }
}

impl From<ParityError> for Failure {
    fn from(e: ParityError) -> Self {
        let hint = e.hint();
        Failure::input(e.to_string()).hint(hint)
    }
}

/// The bundle directory: the one given, or the workspace's.
fn bundle_dir(ws: Option<&Path>, dir: Option<&Path>) -> Result<PathBuf, Failure> {
    match dir {
        Some(d) => Ok(d.to_path_buf()),
        None => {
            let ws = Workspace::find(ws).map_err(|f| {
                f.hint("give the bundle directory, for example `kfm policy test policy/`")
            })?;
            Ok(ws.dir.join(&ws.config.policy_bundle))
        }
    }
}

fn options_for(ws: Option<&Path>) -> Options {
    let mut options = Options::default();
    if let Ok(w) = Workspace::find(ws) {
        options.budget = w.config.policy_budget;
    }
    options
}

fn test(ws: Option<&Path>, a: &PolicyTestArgs, fmt: Format) -> Result<u8, Failure> {
    let junit_to_stdout = a.junit.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if junit_to_stdout && fmt == Format::Json {
        return Err(
            Failure::input("--junit - and --format json both write to stdout")
                .hint("write the JUnit report to a file: --junit report.xml"),
        );
    }
    let dir = bundle_dir(ws, a.dir.as_deref())?;
    let bundle = Bundle::load(&dir)?;
    let run = match &a.run {
        Some(r) => Some(regex::Regex::new(r).map_err(|e| {
            Failure::input(format!("--run {r:?} is not a regular expression: {e}"))
        })?),
        None => None,
    };
    let options = TestOptions {
        run,
        coverage: a.coverage,
        decision: options_for(ws),
    };
    let report = kfm_policy::runner::run(&bundle, &options).map_err(|e| match e {
        kfm_policy::runner::RunnerError::Bundle(b) => Failure::from(b),
        other => Failure::input(other.to_string())
            .hint("a fixture file holds `cases:`, each with name, input and expect {allow, reason, obligations}"),
    })?;
    if let Some(path) = &a.junit {
        let xml = report.to_junit();
        if path.as_os_str() == "-" {
            print!("{xml}");
        } else {
            std::fs::write(path, xml)
                .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))?;
        }
    }
    let empty = report.cases.is_empty();
    match fmt {
        Format::Json => print_json(&report)?,
        Format::Human if junit_to_stdout => {}
        Format::Human => print_test_report(&bundle, &report),
    }
    if empty && a.fail_on_empty {
        return Err(Failure {
            code: EXIT_RULE,
            message: "no policy test ran (--fail-on-empty)".into(),
            hint: Some("check --run, or add test_ rules and fixtures under tests/".into()),
        });
    }
    Ok(if report.ok() { 0 } else { EXIT_RULE })
}

fn print_test_report(bundle: &Bundle, report: &TestReport) {
    println!(
        "policy bundle {} (revision {})\n  digest {}",
        bundle.source().display(),
        report.revision,
        report.bundle_digest
    );
    for c in &report.cases {
        let mark = if c.passed { "PASS" } else { "FAIL" };
        println!("{mark}  {}  ({} µs)", c.name, c.duration_us);
        if let Some(m) = &c.message {
            let at = c
                .line
                .map(|l| format!(" at {}:{l}", c.file))
                .unwrap_or_default();
            println!("      {m}{at}");
        }
    }
    if let Some(cov) = &report.coverage {
        println!("coverage:");
        for f in cov {
            println!("  {:6.1}%  {}", f.percent, f.file);
            if !f.not_covered.is_empty() {
                let lines: Vec<String> = f.not_covered.iter().map(u32::to_string).collect();
                println!("           not covered: lines {}", lines.join(", "));
            }
        }
    }
    println!("{} passed, {} failed", report.passed, report.failed);
}

#[derive(Serialize)]
struct DigestReport<'a> {
    bundle: &'a Path,
    digest: String,
    revision: &'a str,
    signed_by: Option<&'a str>,
    files: usize,
}

fn digest(ws: Option<&Path>, dir: Option<&Path>, fmt: Format) -> Result<u8, Failure> {
    let dir = bundle_dir(ws, dir)?;
    let bundle = Bundle::load(&dir)?;
    // A bundle that cannot be prepared has no digest worth pinning.
    DecisionPoint::new(&bundle, Options::default())?;
    let report = DigestReport {
        bundle: &dir,
        digest: bundle.digest().to_string(),
        revision: bundle.revision(),
        signed_by: bundle.signer(),
        files: bundle.files().len(),
    };
    match fmt {
        Format::Json => print_json(&report)?,
        Format::Human => println!("{}", report.digest),
    }
    Ok(0)
}

fn pins_path(ws: &Workspace, env: Environment) -> PathBuf {
    ws.dir.join("environments").join(format!("{env}.toml"))
}

/// Reads `environments/<env>.toml` (missing = nothing pinned).
pub fn read_pins(ws: &Workspace, env: Environment) -> Result<EnvironmentPins, Failure> {
    let path = pins_path(ws, env);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            Failure::input(format!("{}: {}", path.display(), e.message()))
                .hint("environments/<env>.toml holds [policy] bundle_digest = \"sha256:…\"")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EnvironmentPins::default()),
        Err(e) => Err(Failure::input(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

#[derive(Serialize)]
struct PinReport {
    environment: String,
    file: PathBuf,
    digest: String,
    previous: Option<String>,
}

fn pin(ws: Option<&Path>, a: &PolicyPinArgs, fmt: Format) -> Result<u8, Failure> {
    let w = Workspace::find(ws)?;
    let env: Environment = a.env;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => w.dir.join(&w.config.policy_bundle),
    };
    let bundle = Bundle::load(&dir)?;
    // Never pin a bundle that cannot answer.
    DecisionPoint::new(&bundle, Options::default())?;
    let path = pins_path(&w, env);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            EnvironmentPins::default_toml(env, None)
        }
        Err(e) => {
            return Err(Failure::input(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let previous = read_pins(&w, env)?
        .policy
        .bundle_digest
        .map(|d| d.to_string());
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| Failure::input(format!("{}: {e}", path.display())))?;
    if !doc.contains_table("policy") {
        doc["policy"] = toml_edit::table();
    }
    doc["policy"]["bundle_digest"] = toml_edit::value(bundle.digest().to_string());
    let new_text = doc.to_string();
    // Check that what we write is what the runtime will read.
    let _: EnvironmentPins = toml::from_str(&new_text)
        .map_err(|e| Failure::input(format!("{}: {}", path.display(), e.message())))?;
    write_atomically(&path, new_text.as_bytes())?;
    let report = PinReport {
        environment: env.to_string(),
        file: path,
        digest: bundle.digest().to_string(),
        previous,
    };
    match fmt {
        Format::Json => print_json(&report)?,
        Format::Human => match &report.previous {
            Some(p) if *p == report.digest => {
                println!(
                    "{} already pins {}; nothing changed",
                    report.environment, report.digest
                )
            }
            Some(p) => println!(
                "pinned {} for {} (was {p}) in {}",
                report.digest,
                report.environment,
                report.file.display()
            ),
            None => println!(
                "pinned {} for {} in {}",
                report.digest,
                report.environment,
                report.file.display()
            ),
        },
    }
    Ok(0)
}

/// Write to a temporary file beside `path`, sync, rename: a crash leaves
/// the old pin or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let fail = |e: std::io::Error| Failure::input(format!("cannot write {}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("pin"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Loads the workspace bundle for its environment: refuses unless the
/// digest is the pinned one (policy parity).
pub fn load_pinned(ws: &Workspace) -> Result<(Bundle, DecisionPoint), Failure> {
    let env = ws.config.environment;
    let pins = read_pins(ws, env)?;
    let options = Options {
        budget: ws.config.policy_budget,
        ..Options::default()
    };
    kfm_policy::load_for_environment(&ws.dir.join(&ws.config.policy_bundle), env, &pins, options)
        .map_err(Failure::from)
}

fn read_json_input(path: &Path) -> Result<serde_json::Value, Failure> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure::input(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::input(format!("cannot read {}: {e}", path.display())))?
    };
    serde_json::from_str(&text).map_err(|e| {
        Failure::input(format!(
            "{}:{}:{}: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
        .hint("the input is one JSON object: {subject, action, resource, context}")
    })
}

#[derive(Serialize)]
struct EvalReport<'a> {
    bundle_digest: String,
    revision: &'a str,
    decision: &'a kfm_policy::Decision,
    detail: Option<&'a str>,
    elapsed_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<Vec<FiredRule>>,
}

#[derive(Serialize)]
struct FiredRule {
    rule: String,
    at: String,
    value: serde_json::Value,
}

fn eval(ws: Option<&Path>, a: &PolicyEvalArgs, fmt: Format) -> Result<u8, Failure> {
    let (bundle, point) = match &a.bundle {
        Some(dir) => {
            let bundle = Bundle::load(dir)?;
            let point = DecisionPoint::new(&bundle, options_for(ws))?;
            (bundle, point)
        }
        None => load_pinned(&Workspace::find(ws)?)?,
    };
    let mut input = read_json_input(&a.input)?;
    if a.now {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if let Some(obj) = input.as_object_mut() {
            let ctx = obj
                .entry("context")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(ctx) = ctx.as_object_mut() {
                ctx.insert("time".into(), serde_json::Value::String(now));
            }
        }
    }
    let (evaluation, fired) = if a.explain {
        let (e, f) = point.explain(&input);
        (e, Some(f))
    } else {
        (point.evaluate(&input), None)
    };
    let report = EvalReport {
        bundle_digest: bundle.digest().to_string(),
        revision: bundle.revision(),
        decision: &evaluation.decision,
        detail: evaluation.detail.as_deref(),
        elapsed_us: evaluation.elapsed.as_micros() as u64,
        rules: fired.map(|f| {
            f.into_iter()
                .map(|(r, value)| FiredRule {
                    rule: format!("data.{}.{}", r.package, r.name),
                    at: format!("{}:{}", r.file, r.line),
                    value,
                })
                .collect()
        }),
    };
    match fmt {
        Format::Json => print_json(&report)?,
        Format::Human => {
            let d = report.decision;
            println!(
                "{}  reason: {}",
                if d.allow { "ALLOW" } else { "DENY" },
                d.reason
            );
            if let Some(detail) = report.detail {
                println!("  decision point: {detail}");
            }
            if d.obligations.is_empty() {
                println!("  obligations: none");
            } else {
                println!("  obligations:");
                for o in &d.obligations {
                    println!("    {}", serde_json::to_string(o).unwrap_or_default());
                }
            }
            if let Some(rules) = &report.rules {
                println!("  rules that produced something:");
                for r in rules {
                    println!("    {}  ({})\n      = {}", r.rule, r.at, r.value);
                }
            }
            println!(
                "  bundle {} (revision {}), {} µs",
                report.bundle_digest, report.revision, report.elapsed_us
            );
        }
    }
    Ok(if evaluation.decision.allow {
        0
    } else {
        EXIT_RULE
    })
}

#[derive(Serialize)]
struct DiffReport<'a> {
    from: String,
    to: String,
    inputs: usize,
    changed: &'a [kfm_policy::diff::Change],
}

fn diff(a: &PolicyDiffArgs, fmt: Format) -> Result<u8, Failure> {
    let load = |dir: &Path| -> Result<(Bundle, DecisionPoint), Failure> {
        let b = Bundle::load(dir)?;
        let p = DecisionPoint::new(&b, Options::default())?;
        Ok((b, p))
    };
    let (old_b, old) = load(&a.from)?;
    let (new_b, new) = load(&a.to)?;
    let inputs = kfm_policy::diff::read_inputs(&a.inputs).map_err(|e| {
        Failure::input(e)
            .hint("give decision inputs as a JSON array or as JSON Lines (one per line)")
    })?;
    let changed = kfm_policy::diff::diff(&old, &new, &inputs).map_err(|(i, e)| {
        let at = match inputs.get(i).and_then(|(line, _)| *line) {
            Some(line) => format!("{}:{line}", a.inputs.display()),
            None => format!("{} (input {})", a.inputs.display(), i + 1),
        };
        Failure::input(format!("{at}: the input has no canonical JSON form: {e}"))
            .hint("give each decision input as plain JSON without duplicate keys")
    })?;
    let report = DiffReport {
        from: old_b.digest().to_string(),
        to: new_b.digest().to_string(),
        inputs: inputs.len(),
        changed: &changed,
    };
    match fmt {
        Format::Json => print_json(&report)?,
        Format::Human => {
            println!("from {} ({})", a.from.display(), report.from);
            println!("to   {} ({})", a.to.display(), report.to);
            for c in &changed {
                let at = c
                    .line
                    .map(|l| format!("line {l}"))
                    .unwrap_or(format!("#{}", c.index));
                let show = |d: &kfm_policy::Decision| {
                    format!(
                        "{} {} {}",
                        if d.allow { "allow" } else { "deny" },
                        d.reason,
                        serde_json::to_string(&d.obligations).unwrap_or_default()
                    )
                };
                println!(
                    "  {at} (input {})\n    before: {}\n    after:  {}",
                    c.input_digest,
                    show(&c.before),
                    show(&c.after)
                );
            }
            println!("{} of {} decisions change", changed.len(), report.inputs);
        }
    }
    Ok(if changed.is_empty() { 0 } else { EXIT_RULE })
}

fn sign(ws: Option<&Path>, a: &PolicySignArgs, fmt: Format) -> Result<u8, Failure> {
    let dir = bundle_dir(ws, a.dir.as_deref())?;
    let key_ref = SecretRef::parse(&a.key).ok_or_else(|| {
        Failure::input(format!("--key {:?} is not a reference", a.key))
            .hint("give env:NAME or file:PATH; the key is base64 of a 32-byte ed25519 seed")
    })?;
    let text = match &key_ref {
        SecretRef::Env(name) => std::env::var(name)
            .map_err(|_| Failure::input(format!("environment variable {name} is not set")))?,
        SecretRef::File(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::input(format!("cannot read {}: {e}", path.display())))?,
    };
    let key = kfm_policy::bundle::parse_signing_key(&text)
        .map_err(|e| Failure::input(format!("signing key: {e}")))?;
    // Refuse to sign a bundle that does not load (the signature would
    // vouch for something unusable).
    let mut files = BTreeMap::new();
    let loaded = Bundle::load(&dir);
    if let Err(kfm_policy::BundleError::Signature { .. }) = &loaded {
        // Re-signing after an edit is the point of this command.
    } else {
        let b = loaded?;
        DecisionPoint::new(&b, Options::default())?;
        files = b.files().clone();
    }
    let digest = kfm_policy::bundle::sign(&dir, &key)?;
    if !files.is_empty() && kfm_policy::bundle::digest_of(&files) != digest {
        return Err(Failure::input(
            "the bundle changed while it was being signed",
        ));
    }
    Bundle::load(&dir)?;
    match fmt {
        Format::Json => print_json(&serde_json::json!({"digest": digest.to_string()}))?,
        Format::Human => println!("signed {} ({digest})", dir.display()),
    }
    Ok(0)
}
