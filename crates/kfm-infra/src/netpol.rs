//! NetworkPolicy: default deny per namespace, and the proof that UI pods
//! cannot reach data pods.
//!
//! Namespaces are classed by the label [`TIER_LABEL`] on their `Namespace`
//! object (`ui`, `api`, `data`, `pipeline`). The proof follows Kubernetes'
//! semantics: traffic from P to Q flows when P's egress allows it (P is not
//! selected by any policy with `Egress` in its types, or one such policy has
//! a rule whose peers match Q) *and* Q's ingress allows it (the same, with
//! `Ingress`). `policyTypes` defaults to `Ingress`, plus `Egress` when the
//! policy has an `egress` section. Peers are matched on pod labels and on
//! namespace labels, including the `kubernetes.io/metadata.name` label every
//! namespace carries. Ports do not matter: any open port is reachable.
//!
//! The pods considered are every pod template committed in a UI or data
//! namespace, one pod without labels in each (a pod someone runs by hand),
//! and, for every pod selector a policy names, a pod with just the labels
//! it requires (a pod an operator or another chart deploys, which the
//! repository never shows). An `ipBlock` that may cover pod addresses (private ranges, or
//! `0.0.0.0/0`, without `except` entries for them) cannot be modelled: the
//! proof then fails closed (KFM-NET-004).

use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::finding::Finding;
use crate::k8s::{Object, Typed};
use crate::scan::ScanError;
use crate::yaml::Seg;

/// The namespace label that classes a namespace into a tier.
pub const TIER_LABEL: &str = "kfm.io/tier";

/// Address ranges pods are given addresses from in practice.
const POD_RANGES: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

struct Pol<'a> {
    obj: &'a Object,
    ns: String,
    np: &'a NetworkPolicy,
    ingress: bool,
    egress: bool,
}

#[derive(Clone)]
struct PodRef {
    ns: String,
    name: String,
    labels: BTreeMap<String, String>,
}

/// One direction's verdict for a pair of pods.
enum Verdict {
    Denied,
    /// Why it is allowed, and the policy (file, line) that allows it if any.
    Allowed(String, Option<(String, u32)>),
    /// An ipBlock that may match the pod: cannot be modelled.
    Unprovable(String, (String, u32)),
}

/// Runs the NetworkPolicy rules over every Kubernetes object in the tree.
/// `ns_of` gives an object's effective namespace (as written, or as the
/// kustomization that applies it sets it).
pub fn analyse(
    objects: &[Object],
    ns_of: &dyn Fn(&Object) -> String,
) -> Result<Vec<Finding>, ScanError> {
    let mut out = Vec::new();
    // Namespaces: declared, or running a workload.
    let mut ns_labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut ns_anchor: BTreeMap<String, &Object> = BTreeMap::new();
    for o in objects {
        if let Typed::Namespace(labels) = &o.typed {
            let mut l = labels.clone();
            l.insert("kubernetes.io/metadata.name".into(), o.name.clone());
            ns_labels.insert(o.name.clone(), l);
            ns_anchor.insert(o.name.clone(), o);
        }
    }
    for o in objects {
        // Network policies govern pods: a namespace that runs a workload is
        // under the default-deny rule even if the tree does not declare it.
        if matches!(o.typed, Typed::Workload(_)) {
            let ns = ns_of(o);
            ns_labels.entry(ns.clone()).or_insert_with(|| {
                BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), ns.clone())])
            });
            ns_anchor.entry(ns).or_insert(o);
        }
    }
    let mut pols = Vec::new();
    for o in objects {
        if let Typed::NetworkPolicy(np) = &o.typed {
            let spec = np.spec.as_ref();
            let types: Vec<String> = match spec.and_then(|s| s.policy_types.clone()) {
                Some(t) => t,
                None => {
                    let mut t = vec!["Ingress".to_owned()];
                    if spec.is_some_and(|s| s.egress.is_some()) {
                        t.push("Egress".to_owned());
                    }
                    t
                }
            };
            for t in &types {
                if t != "Ingress" && t != "Egress" {
                    return Err(ScanError::Schema {
                        path: o.doc.file.clone(),
                        line: o
                            .doc
                            .line_of(&[Seg::Key("spec"), Seg::Key("policyTypes")])
                            .0 as usize,
                        reason: format!("policyTypes entry {t:?} is neither Ingress nor Egress"),
                    });
                }
            }
            // Every selector must be one Kubernetes can apply, whether or not
            // the proof below happens to evaluate it.
            let empty = BTreeMap::new();
            let mut selectors: Vec<&LabelSelector> = spec
                .and_then(|s| s.pod_selector.as_ref())
                .into_iter()
                .collect();
            let peers = spec.into_iter().flat_map(|s| {
                s.ingress
                    .iter()
                    .flatten()
                    .flat_map(|r| r.from.iter().flatten())
                    .chain(
                        s.egress
                            .iter()
                            .flatten()
                            .flat_map(|r| r.to.iter().flatten()),
                    )
            });
            for p in peers {
                selectors.extend(p.pod_selector.as_ref());
                selectors.extend(p.namespace_selector.as_ref());
                if let Some(b) = &p.ip_block {
                    broad(&b.cidr, b.except.as_deref().unwrap_or(&[])).map_err(|reason| {
                        ScanError::Schema {
                            path: o.doc.file.clone(),
                            line: o.doc.start,
                            reason: format!("NetworkPolicy {}: ipBlock: {reason}", o.name),
                        }
                    })?;
                }
            }
            for sel in selectors {
                matches(sel, &empty).map_err(|reason| ScanError::Schema {
                    path: o.doc.file.clone(),
                    line: o.doc.start,
                    reason: format!("NetworkPolicy {}: {reason}", o.name),
                })?;
            }
            pols.push(Pol {
                obj: o,
                ns: ns_of(o),
                np,
                ingress: types.iter().any(|t| t == "Ingress"),
                egress: types.iter().any(|t| t == "Egress"),
            });
        }
    }
    // Default deny, per namespace and direction.
    for (ns, anchor) in &ns_anchor {
        for (dir, rule) in [("Ingress", "KFM-NET-001"), ("Egress", "KFM-NET-002")] {
            let denies = pols
                .iter()
                .any(|p| &p.ns == ns && default_deny(p, dir == "Ingress"));
            if !denies {
                let mut f = Finding::at_doc(
                    &anchor.doc,
                    &[Seg::Key("metadata"), Seg::Key("name")],
                    rule,
                    format!(
                        "namespace {ns} has no default-deny {} NetworkPolicy",
                        dir.to_lowercase()
                    ),
                );
                if anchor.kind != "Namespace" {
                    f.message
                        .push_str(&format!(" (first used by {} {})", anchor.kind, anchor.name));
                }
                out.push(f);
            }
        }
    }
    // The UI → data proof.
    let tier = |t: &str| -> Vec<String> {
        ns_labels
            .iter()
            .filter(|(_, l)| l.get(TIER_LABEL).map(String::as_str) == Some(t))
            .map(|(n, _)| n.clone())
            .collect()
    };
    // Pods per namespace, computed once: every committed pod template, plus
    // one pod without labels.
    let mut pods: BTreeMap<String, Vec<PodRef>> = BTreeMap::new();
    for ns in ns_labels.keys() {
        pods.insert(
            ns.clone(),
            vec![PodRef {
                ns: ns.clone(),
                name: "(a pod without labels)".into(),
                labels: BTreeMap::new(),
            }],
        );
    }
    for o in objects {
        if let Typed::Workload(w) = &o.typed {
            let ns = ns_of(o);
            pods.entry(ns.clone()).or_default().push(PodRef {
                ns,
                name: format!("{} {}", o.kind, o.name),
                labels: w.labels.clone(),
            });
        }
    }
    // Invariant: pods the repository does not hold (deployed by an
    // operator, another chart or by hand) are pods too. For every pod
    // selector a policy names (the pods it applies to, and its peers), a
    // pod carrying just the labels that selector requires is assumed in
    // every UI and data namespace, so a policy admitting traffic to pods
    // nobody committed is still judged.
    let mut selectors: Vec<(String, &LabelSelector)> = Vec::new();
    for p in &pols {
        let Some(spec) = p.np.spec.as_ref() else {
            continue;
        };
        let by = format!("NetworkPolicy {}/{}", p.ns, p.obj.name);
        let mut named: Vec<&LabelSelector> = spec.pod_selector.iter().collect();
        for r in spec.ingress.iter().flatten() {
            named.extend(
                r.from
                    .iter()
                    .flatten()
                    .filter_map(|x| x.pod_selector.as_ref()),
            );
        }
        for r in spec.egress.iter().flatten() {
            named.extend(
                r.to.iter()
                    .flatten()
                    .filter_map(|x| x.pod_selector.as_ref()),
            );
        }
        for sel in named {
            if !selector_empty(sel) {
                selectors.push((by.clone(), sel));
            }
        }
    }
    for ns in tier("ui").into_iter().chain(tier("data")) {
        for (by, sel) in &selectors {
            if let Some(labels) = labels_for(sel) {
                let list = pods.entry(ns.clone()).or_default();
                if !list.iter().any(|p| p.labels == labels) {
                    list.push(PodRef {
                        ns: ns.clone(),
                        name: format!("(a pod not in this repository, as selected by {by})"),
                        labels,
                    });
                }
            }
        }
    }
    let no_pods = Vec::new();
    let pods_in = |ns: &str| pods.get(ns).unwrap_or(&no_pods);
    // Policies per namespace (the only ones that can select its pods).
    let mut by_ns: BTreeMap<&str, Vec<&Pol<'_>>> = BTreeMap::new();
    for p in &pols {
        by_ns.entry(p.ns.as_str()).or_default().push(p);
    }
    let no_pols = Vec::new();
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    for ui in tier("ui") {
        for data in tier("data") {
            let (ui_pols, data_pols) = (
                by_ns.get(ui.as_str()).unwrap_or(&no_pols),
                by_ns.get(data.as_str()).unwrap_or(&no_pols),
            );
            'pairs: for p in pods_in(&ui) {
                for q in pods_in(&data) {
                    let eg = direction(
                        ui_pols,
                        p,
                        q,
                        &ns_labels,
                        true,
                        anchor_of(&ns_anchor, &p.ns),
                    )?;
                    let ing = direction(
                        data_pols,
                        q,
                        p,
                        &ns_labels,
                        false,
                        anchor_of(&ns_anchor, &q.ns),
                    )?;
                    let finding = match (&eg, &ing) {
                        (Verdict::Denied, _) | (_, Verdict::Denied) => None,
                        (Verdict::Allowed(e, el), Verdict::Allowed(i, il)) => {
                            let (file, line) = el.clone().or(il.clone()).unwrap_or_default();
                            Some((
                                "KFM-NET-003",
                                file,
                                line,
                                format!(
                                    "{}/{} can reach {}/{}: egress {e}; ingress {i}",
                                    p.ns, p.name, q.ns, q.name
                                ),
                            ))
                        }
                        (Verdict::Unprovable(why, at), _) | (_, Verdict::Unprovable(why, at)) => {
                            Some((
                                "KFM-NET-004",
                                at.0.clone(),
                                at.1,
                                format!(
                                    "cannot prove {}/{} cannot reach {}/{}: {why}",
                                    p.ns, p.name, q.ns, q.name
                                ),
                            ))
                        }
                    };
                    if let Some((rule, file, line, message)) = finding
                        && reported.insert((ui.clone(), data.clone()))
                    {
                        let snippet = objects
                            .iter()
                            .find(|o| {
                                o.doc.file == file
                                    && (o.doc.start..o.doc.start + o.doc.text.lines().count())
                                        .contains(&(line as usize))
                            })
                            .map(|o| o.doc.snippet(line))
                            .unwrap_or_default();
                        out.push(Finding {
                            file,
                            line,
                            column: 1,
                            rule: rule.into(),
                            message,
                            snippet,
                        });
                        break 'pairs;
                    }
                }
            }
        }
    }
    Ok(out)
}

fn anchor_of<'a>(a: &BTreeMap<String, &'a Object>, ns: &str) -> Option<&'a Object> {
    a.get(ns).copied()
}

/// A policy that isolates every pod of its namespace in one direction and
/// allows nothing without a peer.
fn default_deny(p: &Pol<'_>, ingress: bool) -> bool {
    let Some(spec) = p.np.spec.as_ref() else {
        return false;
    };
    let selects_all = spec.pod_selector.as_ref().is_none_or(selector_empty);
    if !selects_all || !(if ingress { p.ingress } else { p.egress }) {
        return false;
    }
    if ingress {
        spec.ingress
            .iter()
            .flatten()
            .all(|r| r.from.as_ref().is_some_and(|f| !f.is_empty()))
    } else {
        spec.egress
            .iter()
            .flatten()
            .all(|r| r.to.as_ref().is_some_and(|t| !t.is_empty()))
    }
}

/// The fewest labels a pod needs to match `sel`, or `None` if no pod can
/// (`In` takes its first value, `Exists` any value; `NotIn` and
/// `DoesNotExist` are met by leaving the key out).
fn labels_for(sel: &LabelSelector) -> Option<BTreeMap<String, String>> {
    let mut labels: BTreeMap<String, String> = sel.match_labels.clone().unwrap_or_default();
    for e in sel.match_expressions.iter().flatten() {
        match e.operator.as_str() {
            "In" => {
                let v = e.values.as_ref()?.first()?.clone();
                if labels.get(&e.key).is_some_and(|x| x != &v) {
                    return None;
                }
                labels.insert(e.key.clone(), v);
            }
            "Exists" => {
                labels.entry(e.key.clone()).or_insert_with(|| "any".into());
            }
            _ => {}
        }
    }
    // The result must really match (NotIn / DoesNotExist against matchLabels).
    matches(sel, &labels).ok().filter(|m| *m).map(|_| labels)
}

fn selector_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
}

/// Whether `sel` selects `labels`. An operator Kubernetes does not define is
/// an error: the policy could not be applied as written.
fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or(&[]);
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => return Err(format!("unknown label selector operator {other:?}")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The verdict for traffic leaving `from` towards `to` (egress = true, the
/// policies of `from`'s namespace), or arriving at `from` from `to`
/// (egress = false, the policies of `from`'s namespace, `to` the peer).
fn direction(
    pols: &[&Pol<'_>],
    subject: &PodRef,
    peer: &PodRef,
    ns_labels: &BTreeMap<String, BTreeMap<String, String>>,
    egress: bool,
    anchor: Option<&Object>,
) -> Result<Verdict, ScanError> {
    let dir = if egress { "egress" } else { "ingress" };
    let err = |p: &Pol<'_>, reason: String| ScanError::Schema {
        path: p.obj.doc.file.clone(),
        line: p.obj.doc.start,
        reason: format!("NetworkPolicy {}: {reason}", p.obj.name),
    };
    let mut isolating = Vec::new();
    for &p in pols {
        if p.ns != subject.ns || !(if egress { p.egress } else { p.ingress }) {
            continue;
        }
        let Some(spec) = p.np.spec.as_ref() else {
            continue;
        };
        let selected = match &spec.pod_selector {
            Some(sel) => matches(sel, &subject.labels).map_err(|e| err(p, e))?,
            None => true,
        };
        if selected {
            isolating.push(p);
        }
    }
    if isolating.is_empty() {
        let at = anchor.map(|a| {
            (
                a.doc.file.clone(),
                a.doc.line_of(&[Seg::Key("metadata"), Seg::Key("name")]).0,
            )
        });
        return Ok(Verdict::Allowed(
            format!(
                "is not restricted (no NetworkPolicy in {} selects {} for {dir})",
                subject.ns, subject.name
            ),
            at,
        ));
    }
    let empty = BTreeMap::new();
    let peer_ns_labels = ns_labels.get(&peer.ns).unwrap_or(&empty);
    let key = if egress { "egress" } else { "ingress" };
    for p in isolating {
        let spec = p.np.spec.as_ref();
        let rules: Vec<Option<&Vec<NetworkPolicyPeer>>> = if egress {
            spec.and_then(|s| s.egress.as_ref())
                .map(|r| r.iter().map(|r| r.to.as_ref()).collect())
                .unwrap_or_default()
        } else {
            spec.and_then(|s| s.ingress.as_ref())
                .map(|r| r.iter().map(|r| r.from.as_ref()).collect())
                .unwrap_or_default()
        };
        for (i, peers) in rules.iter().enumerate() {
            let at = |doc_path: &[Seg<'_>]| (p.obj.doc.file.clone(), p.obj.doc.line_of(doc_path).0);
            let rule_path = [Seg::Key("spec"), Seg::Key(key), Seg::Index(i)];
            let named = format!("NetworkPolicy {}/{} {key} rule {}", p.ns, p.obj.name, i + 1);
            let Some(peers) = peers.filter(|v| !v.is_empty()) else {
                return Ok(Verdict::Allowed(
                    format!("allowed by {named} (no peers: everything)"),
                    Some(at(&rule_path)),
                ));
            };
            for peer_def in peers.iter() {
                if let Some(block) = &peer_def.ip_block {
                    if let Some(why) = broad(&block.cidr, block.except.as_deref().unwrap_or(&[]))
                        .map_err(|e| err(p, e))?
                    {
                        return Ok(Verdict::Unprovable(
                            format!("{named}: ipBlock {} {why}", block.cidr),
                            at(&rule_path),
                        ));
                    }
                    continue;
                }
                let ns_ok = match &peer_def.namespace_selector {
                    Some(sel) => matches(sel, peer_ns_labels).map_err(|e| err(p, e))?,
                    None => peer.ns == p.ns,
                };
                let pod_ok = match &peer_def.pod_selector {
                    Some(sel) => matches(sel, &peer.labels).map_err(|e| err(p, e))?,
                    None => true,
                };
                if ns_ok && pod_ok {
                    return Ok(Verdict::Allowed(
                        format!("allowed by {named}"),
                        Some(at(&rule_path)),
                    ));
                }
            }
        }
    }
    Ok(Verdict::Denied)
}

/// Why an ipBlock may cover pod addresses, if it may.
fn broad(cidr: &str, except: &[String]) -> Result<Option<String>, String> {
    let c = parse_cidr(cidr)?;
    let ex: Vec<IpNet> = except
        .iter()
        .map(|e| parse_cidr(e))
        .collect::<Result<_, _>>()?;
    for r in POD_RANGES {
        let r = parse_cidr(r)?;
        // CIDRs are nested or disjoint: the overlap is the smaller one.
        let overlap = if c.contains(&r) {
            r
        } else if r.contains(&c) {
            c
        } else {
            continue;
        };
        if !ex.iter().any(|e| e.contains(&overlap)) {
            return Ok(Some(format!("may cover pod addresses in {overlap}")));
        }
    }
    Ok(None)
}

/// A CIDR as NetworkPolicy writes it (`10.0.0.0/8`, `fd00::/8`); ipnet
/// does the address arithmetic (containment across prefix lengths, one
/// family at a time).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>().map_err(|_| {
        format!("{s:?} is not a CIDR: write an address, a slash and a prefix length (at most 32 for IPv4, 128 for IPv6), e.g. 10.0.0.0/8")
    })
}

#[cfg(test)]
#[path = "netpol_tests.rs"]
mod tests;
