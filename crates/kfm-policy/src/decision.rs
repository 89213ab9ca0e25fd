//! The decision point: one prepared regorus engine per bundle, evaluated
//! under a time budget, with every failure turned into a deny.
//!
//! Engines are expensive to prepare (parse, schedule, index) and cheap to
//! clone once prepared. The decision point keeps a prepared prototype and a
//! small pool of clones: a call borrows an engine, sets the input, evaluates
//! the entry point and gives the engine back. `benches/policy.rs` measures
//! this against a clone per call and a fresh engine per call.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kfm_core::Digest;
use regorus::Engine;
use regorus::unstable::{Rule, RuleHead};
use regorus::utils::limits::ExecutionTimerConfig;
use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, BundleError};
use crate::obligation::{Obligation, ObligationError, parse_obligation};

/// The rule every KFM bundle must define: `{allow, obligations, reason}`.
pub const DEFAULT_ENTRYPOINT: &str = "data.kfm.authz.decision";
/// The evaluation budget when none is configured.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(50);

/// Reason codes of denies that the decision point itself produces, when the
/// policy could not give a usable answer. Each is a deny: fail closed.
pub mod reasons {
    /// The entry point evaluated to undefined.
    pub const UNDEFINED: &str = "policy.undefined";
    /// The result is not `{allow: bool, obligations: [...], reason: string}`.
    pub const MALFORMED: &str = "policy.malformed_result";
    /// An obligation whose type this enforcement point does not know.
    pub const UNKNOWN_OBLIGATION: &str = "policy.unknown_obligation";
    /// The engine failed (a builtin error, a conflict between rule values…).
    pub const ENGINE_ERROR: &str = "policy.engine_error";
    /// The evaluation ran past its time budget.
    pub const TIMEOUT: &str = "policy.timeout";
}

/// What the policy decided: the contract of SPEC §4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub allow: bool,
    pub obligations: Vec<Obligation>,
    pub reason: String,
}

impl Decision {
    /// A deny with no obligations.
    pub fn deny(reason: &str) -> Self {
        Self {
            allow: false,
            obligations: Vec::new(),
            reason: reason.to_owned(),
        }
    }
}

/// A decision with what is needed to explain or record it.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub decision: Decision,
    /// Why the decision point overrode the policy (engine error text, the
    /// malformed part of the result…); `None` when the policy answered.
    pub detail: Option<String>,
    pub elapsed: Duration,
}

/// Knobs of the decision point.
#[derive(Debug, Clone)]
pub struct Options {
    pub entrypoint: String,
    pub budget: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            entrypoint: DEFAULT_ENTRYPOINT.to_owned(),
            budget: DEFAULT_BUDGET,
        }
    }
}

/// A rule of the bundle, as written (for tests and explanations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// File, relative to the bundle root.
    pub file: String,
    /// Package without the `data.` prefix (`kfm.authz`).
    pub package: String,
    pub name: String,
    pub line: u32,
    pub is_function: bool,
}

/// The policy decision point for one bundle.
pub struct DecisionPoint {
    digest: Digest,
    revision: String,
    options: Options,
    rules: Vec<RuleInfo>,
    prototype: Mutex<Engine>,
    pool: Mutex<Vec<Engine>>,
}

impl std::fmt::Debug for DecisionPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionPoint")
            .field("digest", &self.digest)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Builds an engine with the bundle's modules and data, checking every
/// package against the manifest roots. Shared by the decision point and the
/// test runner, so CI and runtime load a bundle the same way.
pub(crate) fn build_engine(bundle: &Bundle) -> Result<Engine, BundleError> {
    let mut engine = Engine::new();
    engine.set_rego_v0(false);
    // As in OPA: a builtin error (an unparsable date, say) makes its
    // expression undefined rather than failing the whole evaluation. Policies
    // are written so that undefined never grants (see policy/kfm/authz.rego).
    engine.set_strict_builtin_errors(false);
    for module in bundle.modules() {
        let package = engine
            .add_policy(module.path.to_owned(), module.source.to_owned())
            .map_err(|e| BundleError::Rego {
                path: bundle.path_of(module.path),
                reason: e.to_string(),
            })?;
        bundle.check_package(module.path, &package)?;
    }
    engine
        .add_data(regorus::Value::from(bundle.data().clone()))
        .map_err(|e| BundleError::Data {
            path: bundle.source().to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(engine)
}

/// Lists the rules of every module loaded in `engine`.
pub(crate) fn rules_of(engine: &mut Engine) -> Vec<RuleInfo> {
    let mut out = Vec::new();
    for module in engine.get_modules() {
        let file = module.package.span.source.get_path().clone();
        let package = module.package.refr.span().text().to_owned();
        for rule in &module.policy {
            let (refr, is_function, line) = match rule.as_ref() {
                Rule::Spec { span, head, .. } => match head {
                    RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => {
                        (refr, false, span.line)
                    }
                    RuleHead::Func { refr, .. } => (refr, true, span.line),
                },
                Rule::Default {
                    span, refr, args, ..
                } => (refr, !args.is_empty(), span.line),
            };
            out.push(RuleInfo {
                file: file.clone(),
                package: package.clone(),
                name: refr.span().text().to_owned(),
                line,
                is_function,
            });
        }
    }
    out
}

impl DecisionPoint {
    /// Prepares the decision point for `bundle`. Fails when a module does
    /// not parse, a package is outside the roots, or the entry point is not
    /// defined: a bundle that cannot answer is refused before serving.
    pub fn new(bundle: &Bundle, options: Options) -> Result<Self, BundleError> {
        let mut engine = build_engine(bundle)?;
        let rules = rules_of(&mut engine);
        let check_interval = NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: options.budget,
            check_interval,
        });
        // Prepare once (scheduling, rule indexes): clones share the work.
        engine.set_input(regorus::Value::new_object());
        if let Err(e) = engine.eval_rule(options.entrypoint.clone()) {
            return Err(BundleError::Rego {
                path: bundle.source().to_path_buf(),
                reason: format!(
                    "entry point `{}` cannot be evaluated: {e}",
                    options.entrypoint
                ),
            });
        }
        Ok(Self {
            digest: bundle.digest().clone(),
            revision: bundle.revision().to_owned(),
            options,
            rules,
            prototype: Mutex::new(engine),
            pool: Mutex::new(Vec::new()),
        })
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    pub fn revision(&self) -> &str {
        &self.revision
    }
    pub fn options(&self) -> &Options {
        &self.options
    }
    /// Every rule of the bundle, in file order.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    /// Decides on `input`. Never fails: whatever goes wrong is a deny with a
    /// reason code from [`reasons`].
    pub fn decide(&self, input: &serde_json::Value) -> Decision {
        self.evaluate(input).decision
    }

    /// Like [`decide`](Self::decide), with timing and the override detail.
    pub fn evaluate(&self, input: &serde_json::Value) -> Evaluation {
        let mut engine = self.checkout();
        let start = Instant::now();
        engine.set_input(regorus::Value::from(input.clone()));
        let result = engine.eval_rule(self.options.entrypoint.clone());
        let elapsed = start.elapsed();
        let (decision, detail) = match result {
            Err(e) => {
                // A failed evaluation may leave internal state behind: the
                // engine is dropped rather than returned to the pool.
                let timed_out = e
                    .downcast_ref::<regorus::LimitError>()
                    .is_some_and(|l| matches!(l, regorus::LimitError::TimeLimitExceeded { .. }))
                    || e.to_string().contains("time limit");
                let reason = if timed_out {
                    reasons::TIMEOUT
                } else {
                    reasons::ENGINE_ERROR
                };
                return Evaluation {
                    decision: Decision::deny(reason),
                    detail: Some(e.to_string()),
                    elapsed,
                };
            }
            Ok(value) => interpret(&value),
        };
        self.checkin(engine);
        if elapsed > self.options.budget {
            return Evaluation {
                decision: Decision::deny(reasons::TIMEOUT),
                detail: Some(format!(
                    "evaluation took {elapsed:?}, over the {:?} budget",
                    self.options.budget
                )),
                elapsed,
            };
        }
        Evaluation {
            decision,
            detail,
            elapsed,
        }
    }

    /// Evaluates every (non-function) rule of the entry point's package for
    /// `input`, returning those that produced something: the answer to "why
    /// was I denied?".
    pub fn explain(
        &self,
        input: &serde_json::Value,
    ) -> (Evaluation, Vec<(RuleInfo, serde_json::Value)>) {
        let evaluation = self.evaluate(input);
        let package = self
            .options
            .entrypoint
            .trim_start_matches("data.")
            .rsplit_once('.')
            .map(|(p, _)| p.to_owned())
            .unwrap_or_default();
        let mut engine = self.checkout();
        engine.set_input(regorus::Value::from(input.clone()));
        let mut seen = std::collections::BTreeSet::new();
        let mut fired = Vec::new();
        for rule in &self.rules {
            if rule.package != package || rule.is_function || rule.name.contains('[') {
                continue;
            }
            if !seen.insert(rule.name.clone()) {
                continue;
            }
            let Ok(value) = engine.eval_rule(format!("data.{}.{}", rule.package, rule.name)) else {
                continue;
            };
            let json = match value {
                regorus::Value::Undefined => continue,
                v => serde_json::to_value(&v).unwrap_or(serde_json::Value::Null),
            };
            let empty = match &json {
                serde_json::Value::Bool(b) => !b,
                serde_json::Value::Array(a) => a.is_empty(),
                serde_json::Value::Object(o) => o.is_empty(),
                serde_json::Value::Null => true,
                _ => false,
            };
            if !empty {
                fired.push((rule.clone(), json));
            }
        }
        (evaluation, fired)
    }

    fn checkout(&self) -> Engine {
        if let Some(engine) = self.pool.lock().ok().and_then(|mut p| p.pop()) {
            return engine;
        }
        match self.prototype.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn checkin(&self, engine: Engine) {
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < 64 {
                pool.push(engine);
            }
        }
    }
}

/// Turns the entry point's value into a decision, or a deny saying why not.
fn interpret(value: &regorus::Value) -> (Decision, Option<String>) {
    let malformed = |why: String| (Decision::deny(reasons::MALFORMED), Some(why));
    if matches!(value, regorus::Value::Undefined) {
        return (
            Decision::deny(reasons::UNDEFINED),
            Some("the entry point is undefined for this input".into()),
        );
    }
    let json = match serde_json::to_value(value) {
        Ok(j) => j,
        Err(e) => return malformed(format!("result is not JSON: {e}")),
    };
    let serde_json::Value::Object(map) = json else {
        return malformed("result is not an object".into());
    };
    if let Some(extra) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "allow" | "obligations" | "reason"))
    {
        return malformed(format!("result has an unexpected field `{extra}`"));
    }
    let Some(serde_json::Value::Bool(allow)) = map.get("allow") else {
        return malformed("`allow` is missing or not a boolean".into());
    };
    let reason = match map.get("reason") {
        Some(serde_json::Value::String(r)) if !r.is_empty() => r.clone(),
        _ => return malformed("`reason` is missing, empty or not a string".into()),
    };
    let Some(serde_json::Value::Array(raw)) = map.get("obligations") else {
        return malformed("`obligations` is missing or not an array".into());
    };
    let mut obligations = Vec::with_capacity(raw.len());
    for (i, o) in raw.iter().enumerate() {
        match parse_obligation(o) {
            Ok(o) => obligations.push(o),
            Err(ObligationError::Unknown(t)) => {
                return (
                    Decision::deny(reasons::UNKNOWN_OBLIGATION),
                    Some(format!("obligations[{i}] has unknown type `{t}`")),
                );
            }
            Err(ObligationError::Malformed(why)) => {
                return malformed(format!("obligations[{i}]: {why}"));
            }
        }
    }
    if !allow {
        // A deny carries no obligations: nothing is served.
        obligations.clear();
    }
    (
        Decision {
            allow: *allow,
            obligations,
            reason,
        },
        None,
    )
}
