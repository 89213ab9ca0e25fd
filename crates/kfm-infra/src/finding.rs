//! Findings and the rule catalogue.
//!
//! Every rule has a stable id (what waivers, SARIF and CI dashboards refer
//! to) and a one-line fix hint. Ids are never reused for another meaning.

use serde::Serialize;

/// A rule of the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: String,
    pub title: String,
    /// One line: what to do about a finding.
    pub hint: String,
    /// The regex, for rules that are one (so other tools can be given the
    /// same pattern set, as `bench/infra-secrets.sh` does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// One problem found, located.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// Path relative to the scanned directory's parent, `/`-separated.
    pub file: String,
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
    pub rule: String,
    pub message: String,
    /// The offending line, with any secret on it masked.
    pub snippet: String,
}

/// A whole run's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// Files read (text files; binary files are skipped and counted).
    pub files_scanned: usize,
    pub binary_files_skipped: usize,
    pub rules: Vec<Rule>,
    /// Sorted by file, line, column, rule: two runs print the same bytes.
    pub findings: Vec<Finding>,
    /// Findings a current waiver excuses (not failures).
    pub waived: Vec<crate::waivers::Waived>,
    /// Waivers that excused nothing: remove them.
    pub unused_waivers: Vec<crate::waivers::Waiver>,
    /// Every kustomization rendered, with the digest of what it would
    /// apply (plan receipts carry these).
    pub rendered: Vec<crate::render::RenderedDigest>,
}

impl Report {
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }
}

impl Finding {
    /// A finding at a located line of a YAML document.
    pub fn at_doc(
        doc: &crate::yaml::Doc,
        path: &[crate::yaml::Seg<'_>],
        rule: &str,
        message: String,
    ) -> Self {
        let (line, column) = doc.line_of(path);
        Finding {
            file: doc.file.clone(),
            line,
            column,
            rule: rule.to_owned(),
            message,
            snippet: doc.snippet(line),
        }
    }
}

/// The gate's structural rules (the secret rules live in
/// [`crate::secrets`]). Ids are stable: waivers and dashboards name them.
pub fn structural_rules() -> Vec<Rule> {
    const R: &[(&str, &str, &str)] = &[
        (
            "KFM-K8S-001",
            "Kubernetes Secret with data or stringData in the repository",
            "commit a SealedSecret, an ExternalSecret or a SOPS-encrypted file instead; rotate what was committed",
        ),
        (
            "KFM-K8S-002",
            "long-running container without liveness and readiness probes",
            "add livenessProbe and readinessProbe (Jobs and CronJobs are exempt)",
        ),
        (
            "KFM-K8S-003",
            "container without CPU and memory requests and limits",
            "set resources.requests and resources.limits for both cpu and memory",
        ),
        (
            "KFM-K8S-004",
            "container may run as root",
            "set securityContext.runAsNonRoot: true (pod or container) and never runAsUser: 0",
        ),
        (
            "KFM-K8S-005",
            "privilege escalation not disabled",
            "set securityContext.allowPrivilegeEscalation: false on every container",
        ),
        (
            "KFM-K8S-006",
            "privileged container",
            "remove securityContext.privileged: true; grant only the capabilities needed",
        ),
        (
            "KFM-K8S-007",
            "hostPath volume outside the allowed paths",
            "use a ConfigMap, Secret, emptyDir or PersistentVolumeClaim; hostPath is allowed only for /etc/ssl/certs, /usr/share/ca-certificates, /etc/localtime and /usr/share/zoneinfo",
        ),
        (
            "KFM-K8S-008",
            "pod shares a host namespace",
            "remove hostNetwork, hostPID and hostIPC",
        ),
        (
            "KFM-K8S-009",
            "image not pinned by digest",
            "pin the image as name@sha256:<64 hex digits> (a tag alone can be moved)",
        ),
        (
            "KFM-K8S-010",
            "configuration that is not a reference",
            "take secret-looking settings from valueFrom.secretKeyRef (or envFrom a Secret), never a literal value",
        ),
        (
            "KFM-NET-001",
            "namespace without a default-deny ingress NetworkPolicy",
            "add a NetworkPolicy with podSelector: {} and policyTypes: [Ingress] and no ingress rules",
        ),
        (
            "KFM-NET-002",
            "namespace without a default-deny egress NetworkPolicy",
            "add a NetworkPolicy with podSelector: {} and policyTypes: [Egress] and no egress rules",
        ),
        (
            "KFM-NET-003",
            "a UI pod can reach a data pod",
            "narrow the policy on the reported path: UI tiers may reach the API tier only",
        ),
        (
            "KFM-NET-004",
            "reachability cannot be proved",
            "replace the broad ipBlock with selectors, or add except: entries for the cluster's pod ranges",
        ),
        (
            "KFM-TF-001",
            "bucket may be public",
            "make the bucket private: no public ACL or policy, block all public access",
        ),
        (
            "KFM-TF-002",
            "bucket without encryption at rest",
            "configure server-side encryption for the bucket (KMS where available)",
        ),
        (
            "KFM-TF-003",
            "literal secret in Terraform",
            "pass it as a sensitive variable without a default, or read it from a secret manager data source",
        ),
        (
            "KFM-CI-001",
            "required gate workflow with path or branch filters",
            "remove paths, paths-ignore, branches and branches-ignore from push and pull_request: a required check must always run",
        ),
        (
            "KFM-CI-002",
            "required job that can be skipped",
            "remove the job's if: and continue-on-error: the gate summary decides, not the job",
        ),
        (
            "KFM-CI-003",
            "no gate summary that always runs and needs every job",
            "add one job with if: always() whose needs: lists every other job",
        ),
        (
            "KFM-CI-004",
            "gate summary does not count skipped and cancelled as failure",
            "fail unless every needed job's result is success, e.g. check toJSON(needs) for any result != \"success\"",
        ),
        (
            "KFM-WVR-001",
            "expired waiver",
            "fix the finding, or renew the waiver with a new expiry after review",
        ),
    ];
    R.iter()
        .map(|(id, title, hint)| Rule {
            id: (*id).into(),
            title: (*title).into(),
            hint: (*hint).into(),
            pattern: None,
        })
        .collect()
}
