//! Tests of the NetworkPolicy reachability proof.

use super::*;
use crate::k8s::object;
use crate::yaml::documents;

fn objects(text: &str) -> Vec<Object> {
    documents("np.yaml", text)
        .unwrap()
        .into_iter()
        .filter_map(|d| object(d).unwrap())
        .collect()
}

fn run(text: &str) -> Vec<String> {
    let objs = objects(text);
    let ns = |o: &Object| o.namespace.clone().unwrap_or_else(|| "default".into());
    analyse(&objs, &ns)
        .unwrap()
        .into_iter()
        .map(|f| f.rule)
        .collect()
}

const NAMESPACES: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {kfm.io/tier: ui}}
---
apiVersion: v1
kind: Namespace
metadata: {name: db, labels: {kfm.io/tier: data}}
---
apiVersion: v1
kind: Namespace
metadata: {name: api, labels: {kfm.io/tier: api}}
";

fn deny(ns: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: default-deny, namespace: {ns}}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n"
    )
}

fn policy(ns: &str, name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"
    )
}

fn all_denied() -> String {
    format!("{NAMESPACES}{}{}{}", deny("web"), deny("db"), deny("api"))
}

/// The table: a setup and the rules it must produce (sorted).
#[test]
fn reachability_table() {
    let ui_to_api = policy(
        "web",
        "to-api",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n    - to:\n        - namespaceSelector: {matchLabels: {kfm.io/tier: api}}\n",
    );
    let db_from_api = policy(
        "db",
        "from-api",
        "  podSelector: {}\n  ingress:\n    - from:\n        - namespaceSelector: {matchLabels: {kfm.io/tier: api}}\n",
    );
    let db_from_all_ns = policy(
        "db",
        "from-any-ns",
        "  podSelector: {}\n  ingress:\n    - from:\n        - namespaceSelector: {}\n",
    );
    let ui_egress_all = policy(
        "web",
        "egress-all",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n    - {}\n",
    );
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("everything denied", all_denied(), vec![]),
        (
            "no policies at all",
            NAMESPACES.to_owned(),
            vec![
                "KFM-NET-001",
                "KFM-NET-001",
                "KFM-NET-001",
                "KFM-NET-002",
                "KFM-NET-002",
                "KFM-NET-002",
                "KFM-NET-003",
            ],
        ),
        (
            "ui may reach api, data admits api",
            format!("{}{ui_to_api}{db_from_api}", all_denied()),
            vec![],
        ),
        (
            "data admits every namespace, but ui egress is denied",
            format!("{}{db_from_all_ns}", all_denied()),
            vec![],
        ),
        (
            "ui egress open, data admits every namespace",
            format!("{}{db_from_all_ns}{ui_egress_all}", all_denied()),
            vec!["KFM-NET-003"],
        ),
        // Ingress only by default: an egress rule-less policy without
        // policyTypes does not isolate egress.
        (
            "policyTypes default: ingress only",
            format!(
                "{NAMESPACES}{}{}{}{db_from_all_ns}",
                deny("db"),
                deny("api"),
                policy("web", "in-only", "  podSelector: {}\n")
            ),
            vec!["KFM-NET-002", "KFM-NET-003"],
        ),
        // An egress section makes it an egress policy by default.
        (
            "policyTypes default: egress section present",
            format!(
                "{NAMESPACES}{}{}{}{db_from_all_ns}",
                deny("db"),
                deny("api"),
                policy(
                    "web",
                    "eg",
                    "  podSelector: {}\n  egress:\n    - to:\n        - namespaceSelector: {matchLabels: {kfm.io/tier: api}}\n"
                )
            ),
            // Ingress and Egress both: it denies ingress (no rules) and
            // lets egress reach the API tier only.
            vec![],
        ),
        (
            "egress-only deny in ui, data open for ingress",
            format!(
                "{NAMESPACES}{}{}{}",
                deny("api"),
                policy("web", "e", "  podSelector: {}\n  policyTypes: [Egress]\n"),
                policy("db", "e", "  podSelector: {}\n  policyTypes: [Egress]\n")
            ),
            vec!["KFM-NET-001", "KFM-NET-001"],
        ),
        (
            "broad ipBlock from ui",
            format!(
                "{}{}{db_from_all_ns}",
                all_denied(),
                policy(
                    "web",
                    "internet",
                    "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n    - to:\n        - ipBlock: {cidr: 0.0.0.0/0}\n"
                )
            ),
            vec!["KFM-NET-004"],
        ),
        (
            "ipBlock with the pod ranges excepted",
            format!(
                "{}{}{db_from_all_ns}",
                all_denied(),
                policy(
                    "web",
                    "internet",
                    "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n    - to:\n        - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10]}\n"
                )
            ),
            vec![],
        ),
        (
            "namespace selected by its automatic name label",
            format!(
                "{}{}{}",
                all_denied(),
                policy(
                    "web",
                    "to-db",
                    "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n    - to:\n        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}\n"
                ),
                policy(
                    "db",
                    "from-web",
                    "  podSelector: {}\n  ingress:\n    - from:\n        - namespaceSelector: {matchExpressions: [{key: kfm.io/tier, operator: In, values: [ui, api]}]}\n"
                )
            ),
            vec!["KFM-NET-003"],
        ),
        (
            "pod selector alone means the policy's own namespace",
            format!(
                "{}{}{}",
                all_denied(),
                policy(
                    "web",
                    "to-any",
                    "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n    - to:\n        - podSelector: {}\n"
                ),
                db_from_all_ns
            ),
            vec![],
        ),
        // Pods nobody committed: an operator's database pods in the data
        // namespace, admitted from the UI tier by label. No workload in the
        // tree carries app=pg-operator, and the pod without labels does not
        // match the selector: the selector's own pod is judged.
        (
            "a policy admits ui traffic to pods the repository does not hold",
            format!(
                "{}{ui_egress_all}{}",
                all_denied(),
                policy(
                    "db",
                    "operator-db",
                    "  podSelector: {matchLabels: {app: pg-operator}}\n  ingress:\n    - from:\n        - namespaceSelector: {matchLabels: {kfm.io/tier: ui}}\n"
                )
            ),
            vec!["KFM-NET-003"],
        ),
        (
            "...and a ui pod named only by a peer selector",
            format!(
                "{}{}{}",
                all_denied(),
                policy(
                    "web",
                    "dashboard-egress",
                    "  podSelector: {matchExpressions: [{key: role, operator: In, values: [dashboard]}]}\n  policyTypes: [Egress]\n  egress:\n    - {}\n"
                ),
                policy(
                    "db",
                    "from-dashboards",
                    "  podSelector: {matchExpressions: [{key: app, operator: Exists}]}\n  ingress:\n    - from:\n        - namespaceSelector: {}\n          podSelector: {matchLabels: {role: dashboard}}\n"
                )
            ),
            vec!["KFM-NET-003"],
        ),
        (
            "a selector no pod can satisfy adds no pod",
            format!(
                "{}{ui_egress_all}{}",
                all_denied(),
                policy(
                    "db",
                    "impossible",
                    "  podSelector: {matchLabels: {app: x}, matchExpressions: [{key: app, operator: NotIn, values: [x]}]}\n  ingress:\n    - from:\n        - namespaceSelector: {matchLabels: {kfm.io/tier: ui}}\n"
                )
            ),
            vec![],
        ),
    ];
    for (name, text, mut want) in cases {
        let mut got = run(&text);
        got.sort();
        want.sort();
        assert_eq!(got, want, "case {name:?}");
    }
}

#[test]
fn the_reported_path_names_the_policies() {
    let text = format!(
        "{}{}{}",
        all_denied(),
        policy(
            "db",
            "from-any-ns",
            "  podSelector: {}\n  ingress:\n    - from:\n        - namespaceSelector: {}\n"
        ),
        policy(
            "web",
            "egress-all",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n    - {}\n"
        )
    );
    let objs = objects(&text);
    let ns = |o: &Object| o.namespace.clone().unwrap_or_default();
    let f = analyse(&objs, &ns).unwrap();
    assert_eq!(f.len(), 1);
    assert!(
        f[0].message
            .contains("NetworkPolicy web/egress-all egress rule 1"),
        "{}",
        f[0].message
    );
    assert!(
        f[0].message
            .contains("NetworkPolicy db/from-any-ns ingress rule 1"),
        "{}",
        f[0].message
    );
    assert_eq!(f[0].snippet.trim(), "- {}");
}

#[test]
fn cidrs() {
    assert!(broad("0.0.0.0/0", &[]).unwrap().is_some());
    assert!(broad("10.1.0.0/16", &[]).unwrap().is_some());
    assert!(
        broad("10.1.0.0/16", &["10.0.0.0/8".into()])
            .unwrap()
            .is_none()
    );
    assert!(broad("203.0.113.0/24", &[]).unwrap().is_none());
    assert!(broad("::/0", &[]).unwrap().is_some());
    assert!(broad("10.0.0.0/33", &[]).is_err());
    // The overlap named is the smaller of the two ranges.
    assert_eq!(
        broad("10.1.0.0/16", &[]).unwrap().as_deref(),
        Some("may cover pod addresses in 10.1.0.0/16")
    );
    // An IPv4 exception never covers an IPv6 range.
    assert!(broad("::/0", &["0.0.0.0/0".into()]).unwrap().is_some());
    // Hostile or malformed text is refused, naming it and the fix.
    for bad in [
        "10.0.0.0/8; DROP",
        "10.0.0.0",
        "/8",
        "10.0.0.0/-1",
        "fd00::/129",
    ] {
        let e = broad(bad, &[]).unwrap_err();
        assert!(
            e.contains("is not a CIDR") && e.contains("10.0.0.0/8"),
            "{bad}: {e}"
        );
    }
    assert!(broad("0.0.0.0/0", &["nope".into()]).is_err());
}
