//! The decision point: one prepared regorus engine per bundle, evaluated
//! under a time budget, with every failure turned into a deny.
//!
//! Engines are expensive to prepare (parse, schedule, index) and cheap to
//! clone once prepared. The decision point keeps a prepared prototype and a
//! small pool of clones: a call borrows an engine, sets the input, evaluates
//! the entry point and gives the engine back. `benches/policy.rs` measures
//! this against a clone per call and a fresh engine per call.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kfm_core::Digest;
use regorus::Engine;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::{RegoVM, VmError};
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

/// What the policy decided: the contract every bundle answers with (allow, reasons, obligations).
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
    /// The bundle compiled to regorus VM bytecode for the entry point.
    program: Arc<Program>,
    data: regorus::Value,
    /// Idle VMs with the program loaded and the data set.
    pool: Mutex<Vec<RegoVM>>,
    /// The interpreter, prepared: used by `explain` to show rule values.
    interpreter: Mutex<Engine>,
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
        let check_interval = NonZeroU32::new(256).unwrap_or(NonZeroU32::MIN);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: options.budget,
            check_interval,
        });
        let defined = options
            .entrypoint
            .strip_prefix("data.")
            .and_then(|p| p.rsplit_once('.'))
            .is_some_and(|(package, name)| {
                rules
                    .iter()
                    .any(|r| r.package == package && r.name == name && !r.is_function)
            });
        if !defined {
            return Err(BundleError::Rego {
                path: bundle.source().to_path_buf(),
                reason: format!(
                    "entry point `{}` is not defined by any module",
                    options.entrypoint
                ),
            });
        }
        // Prepare the interpreter once (scheduling, rule indexes); it serves
        // `explain`. The value on an empty input does not matter.
        engine.set_input(regorus::Value::new_object());
        let _ = engine.eval_rule(options.entrypoint.clone());
        let entrypoint = options.entrypoint.clone();
        let compile_error = |e: &dyn std::fmt::Display| BundleError::Rego {
            path: bundle.source().to_path_buf(),
            reason: format!("cannot compile `{entrypoint}`: {e}"),
        };
        let entry: regorus::Rc<str> = regorus::Rc::from(options.entrypoint.as_str());
        let compiled = engine
            .compile_with_entrypoint(&entry)
            .map_err(|e| compile_error(&e))?;
        let program = Compiler::compile_from_policy(&compiled, &[entrypoint.as_str()])
            .map_err(|e| compile_error(&e))?;
        let data = regorus::Value::from(bundle.data().clone());
        let point = Self {
            digest: *bundle.digest(),
            revision: bundle.revision().to_owned(),
            options,
            rules,
            program,
            data,
            pool: Mutex::new(Vec::new()),
            interpreter: Mutex::new(engine),
        };
        // A VM now, so that data conflicting with rules is refused at load.
        let vm = point.new_vm().map_err(|e| compile_error(&e))?;
        point.checkin(vm);
        Ok(point)
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
        let start = Instant::now();
        let mut vm = match self.checkout() {
            Ok(vm) => vm,
            Err(e) => {
                return Evaluation {
                    decision: Decision::deny(reasons::ENGINE_ERROR),
                    detail: Some(e.to_string()),
                    elapsed: start.elapsed(),
                };
            }
        };
        vm.set_input(to_rego(input));
        let result = vm.execute();
        let elapsed = start.elapsed();
        let (decision, detail) = match result {
            Err(e) => {
                // A failed run may leave state behind: the VM is dropped
                // rather than returned to the pool.
                let reason = match e {
                    VmError::TimeLimitExceeded { .. }
                    | VmError::InstructionLimitExceeded { .. } => reasons::TIMEOUT,
                    _ => reasons::ENGINE_ERROR,
                };
                return Evaluation {
                    decision: Decision::deny(reason),
                    detail: Some(e.to_string()),
                    elapsed,
                };
            }
            Ok(value) => interpret(&value),
        };
        self.checkin(vm);
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
    /// The same decision taken by regorus's tree-walking interpreter
    /// instead of its VM. The runtime uses the VM (several times faster);
    /// this second opinion backs `explain` and the differential tests that
    /// keep the two in agreement on KFM's bundles.
    pub fn evaluate_with_interpreter(&self, input: &serde_json::Value) -> Evaluation {
        let mut engine = self.interpreter_engine();
        let start = Instant::now();
        engine.set_input(to_rego(input));
        let result = engine.eval_rule(self.options.entrypoint.clone());
        let elapsed = start.elapsed();
        let (decision, detail) = match result {
            Ok(v) => interpret(&v),
            Err(e) => {
                let timed_out = e
                    .downcast_ref::<regorus::LimitError>()
                    .is_some_and(|l| matches!(l, regorus::LimitError::TimeLimitExceeded { .. }));
                let reason = if timed_out {
                    reasons::TIMEOUT
                } else {
                    reasons::ENGINE_ERROR
                };
                (Decision::deny(reason), Some(e.to_string()))
            }
        };
        Evaluation {
            decision,
            detail,
            elapsed,
        }
    }

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
        let mut engine = self.interpreter_engine();
        engine.set_input(to_rego(input));
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

    /// A clone of the prepared interpreter (cheap: its modules are shared).
    fn interpreter_engine(&self) -> Engine {
        match self.interpreter.lock() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn new_vm(&self) -> Result<RegoVM, VmError> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_strict_builtin_errors(false);
        // The budget is enforced in two ways. Preemptively, by an
        // instruction cap proportional to it (regorus's own execution timer
        // reads the clock at every tick and cost a quarter of each decision
        // in `benches/policy.rs`); and exactly, by the wall-clock check in
        // `evaluate` after the run. Either way an over-budget run is a deny.
        vm.set_max_instructions(instruction_cap(self.options.budget));
        vm.set_execution_timer_config(None);
        vm.set_data(self.data.clone())?;
        Ok(vm)
    }

    fn checkout(&self) -> Result<RegoVM, VmError> {
        if let Some(vm) = self.pool.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(vm);
        }
        self.new_vm()
    }

    fn checkin(&self, vm: RegoVM) {
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < 64
        {
            pool.push(vm);
        }
    }
}

/// Converts a JSON value to a regorus value directly, without the clone
/// and the serde round trip of `regorus::Value::from(serde_json::Value)`
/// (two thirds of the fixed cost of a decision in `benches/policy.rs`).
pub(crate) fn to_rego(v: &serde_json::Value) -> regorus::Value {
    match v {
        serde_json::Value::Null => regorus::Value::Null,
        serde_json::Value::Bool(b) => regorus::Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                regorus::Value::from(u)
            } else if let Some(i) = n.as_i64() {
                regorus::Value::from(i)
            } else {
                regorus::Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => regorus::Value::from(s.as_str()),
        serde_json::Value::Array(a) => {
            regorus::Value::from(a.iter().map(to_rego).collect::<Vec<_>>())
        }
        serde_json::Value::Object(o) => regorus::Value::from(
            o.iter()
                .map(|(k, v)| (regorus::Value::from(k.as_str()), to_rego(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
    }
}

/// Instructions a run may execute within `budget`: 100,000 per millisecond,
/// about ten nanoseconds each, so a runaway stops near its budget. The
/// default bundle needs a few thousand per decision.
fn instruction_cap(budget: Duration) -> usize {
    let ms = budget.as_millis().max(1);
    usize::try_from(ms.saturating_mul(100_000)).unwrap_or(usize::MAX)
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
    // Read the result straight from the engine's value: only obligations
    // (usually few) are converted to JSON for their strict parser.
    let Ok(map) = value.as_object() else {
        return malformed("result is not an object".into());
    };
    if let Some(extra) = map.keys().find(|k| {
        !k.as_string()
            .is_ok_and(|k| matches!(k.as_ref(), "allow" | "obligations" | "reason"))
    }) {
        return malformed(format!("result has an unexpected field `{extra}`"));
    }
    let field = |name: &str| map.get(&regorus::Value::from(name));
    let Some(Ok(allow)) = field("allow").map(regorus::Value::as_bool) else {
        return malformed("`allow` is missing or not a boolean".into());
    };
    let reason = match field("reason").map(regorus::Value::as_string) {
        Some(Ok(r)) if !r.is_empty() => r.to_string(),
        _ => return malformed("`reason` is missing, empty or not a string".into()),
    };
    let Some(Ok(raw)) = field("obligations").map(regorus::Value::as_array) else {
        return malformed("`obligations` is missing or not an array".into());
    };
    let mut obligations = Vec::with_capacity(raw.len());
    for (i, o) in raw.iter().enumerate() {
        let o = serde_json::to_value(o).unwrap_or(serde_json::Value::Null);
        match parse_obligation(&o) {
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
