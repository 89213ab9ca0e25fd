#!/usr/bin/env bash
# Whole-tree wall time of `kfm infra check` against Checkov (PyPI) on the
# same trees, in one run:
#   1. infra/ and .github/ of this repository;
#   2. a generated tree of MANIFESTS Kubernetes manifests (a Deployment and a
#      Service each, in 50 namespaces classed by tier, with default-deny and
#      allow NetworkPolicies), TF_FILES Terraform files (20 modules of S3
#      buckets with their public-access blocks and encryption) and TEXT_MB of
#      mixed text (env files, shell, Python, prose) with a secret in about one
#      line in a thousand.
# Both tools judge the whole tree with all of their checks (Checkov runs
# every framework it detects: kubernetes, terraform, secrets, github_actions).
# Each tool runs RUNS times after a warm-up; the median wall time is shown.
# Checkov runs at most CHECKOV_TIMEOUT seconds per run; a run cut off counts
# as that long, so the ratio printed is then a lower bound.
# Checkov is installed with pip if missing.
#
# Usage: bench/infra.sh [MANIFESTS] [TF_FILES] [TEXT_MB] [RUNS]
#        (defaults: 5000 200 50 3)
# Goal (issue #7): >= 50x faster than Checkov.
set -euo pipefail
cd "$(dirname "$0")/.."
MANIFESTS=${1:-5000}
TF_FILES=${2:-200}
TEXT_MB=${3:-50}
RUNS=${4:-3}
CHECKOV_TIMEOUT=${CHECKOV_TIMEOUT:-1800}
command -v checkov >/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'checkov==3.2.*' >&2
cargo build --release -p kfm -q
KFM=$PWD/target/release/kfm
SCRATCH=$PWD/target/bench-infra-tree
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH/tree"
trap 'rm -rf "$SCRATCH"' EXIT

python3 - "$SCRATCH/tree" "$MANIFESTS" "$TF_FILES" "$TEXT_MB" <<'PY'
import os, random, sys
root, manifests, tf_files, text_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(11)
DIGEST = "sha256:" + "".join(rng.choice("0123456789abcdef") for _ in range(64))
tiers = ["ui"] * 10 + ["api"] * 20 + ["data"] * 10 + ["pipeline"] * 10
k8s = os.path.join(root, "k8s"); os.makedirs(k8s)
with open(os.path.join(k8s, "namespaces.yaml"), "w") as f:
    docs = []
    for i, t in enumerate(tiers):
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns{i:02d}\n  labels:\n    kfm.io/tier: {t}\n")
        docs.append(f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny\n  namespace: ns{i:02d}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n")
        if t == "ui":
            docs.append(f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: to-api\n  namespace: ns{i:02d}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n    - to:\n        - namespaceSelector:\n            matchLabels:\n              kfm.io/tier: api\n")
        if t == "data":
            docs.append(f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: from-api\n  namespace: ns{i:02d}\nspec:\n  podSelector: {{}}\n  ingress:\n    - from:\n        - namespaceSelector:\n            matchExpressions:\n              - {{key: kfm.io/tier, operator: In, values: [api, pipeline]}}\n")
    f.write("---\n".join(docs))
for i in range(manifests):
    ns = f"ns{i % len(tiers):02d}"
    d = os.path.join(k8s, ns); os.makedirs(d, exist_ok=True)
    name = f"svc{i:05d}"
    bad = rng.random() < 0.05
    image = f"ghcr.io/kfm/{name}:1.0" if bad else f"ghcr.io/kfm/{name}@{DIGEST}"
    with open(os.path.join(d, name + ".yaml"), "w") as f:
        f.write(f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {name}}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        seccompProfile: {{type: RuntimeDefault}}
      containers:
        - name: app
          image: {image}
          ports: [{{containerPort: 8080}}]
          env:
            - {{name: LOG_LEVEL, value: info}}
            - name: DB_PASSWORD
              valueFrom: {{secretKeyRef: {{name: db, key: password}}}}
          livenessProbe: {{httpGet: {{path: /livez, port: 8080}}}}
          readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}}}
          resources:
            requests: {{cpu: 100m, memory: 64Mi}}
            limits: {{cpu: 500m, memory: 256Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 8080, targetPort: 8080}}]
""")
for i in range(tf_files):
    d = os.path.join(root, "tofu", f"module{i % 20:02d}"); os.makedirs(d, exist_ok=True)
    b = f"b{i:04d}"
    public = rng.random() < 0.05
    with open(os.path.join(d, f"{b}.tf"), "w") as f:
        f.write(f"""resource "aws_s3_bucket" "{b}" {{
  bucket = "kfm-bench-{b}"
  tags = {{ zone = "processed", index = "{i}" }}
}}

resource "aws_s3_bucket_public_access_block" "{b}" {{
  bucket                  = aws_s3_bucket.{b}.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = {"false" if public else "true"}
}}

resource "aws_s3_bucket_server_side_encryption_configuration" "{b}" {{
  bucket = aws_s3_bucket.{b}.id
  rule {{
    apply_server_side_encryption_by_default {{
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }}
  }}
}}

resource "aws_s3_bucket_versioning" "{b}" {{
  bucket = aws_s3_bucket.{b}.id
  versioning_configuration {{ status = "Enabled" }}
}}
""")
    if i % 10 == 0:
        with open(os.path.join(d, "variables.tf"), "w") as f:
            f.write('variable "kms_key_arn" {\n  type = string\n}\n')
words = "kfm dataset policy ledger gate promote catalog stac prov dcat county place kansas river prairie sensor value config".split()
def secret():
    return rng.choice([
        "AKIA%s" % "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
        "ghp_%s" % "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789") for _ in range(36)),
    ])
for i in range(text_mb):
    d = os.path.join(root, "text", f"d{i % 10:02d}"); os.makedirs(d, exist_ok=True)
    ext = [".env", ".sh", ".py", ".txt"][i % 4]
    with open(os.path.join(d, f"f{i:04d}{ext}"), "w") as f:
        n = 0
        while n < 1 << 20:
            if rng.random() < 0.001:
                l = "value = %s\n" % secret()
            else:
                l = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) + "\n"
            f.write(l); n += len(l)
PY

set +e; "$KFM" infra check "$SCRATCH/tree" --format json >"$SCRATCH/kfm.json" 2>"$SCRATCH/err"; rc=$?; set -e
if [[ $rc == 2 ]]; then echo "kfm infra check could not evaluate the tree:" >&2; cat "$SCRATCH/err" >&2; exit 1; fi
found=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["findings"]))' "$SCRATCH/kfm.json")

run_timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { local name=$1 runs=$2; shift 2; "$@" >/dev/null 2>&1 || true
  local t=(); for _ in $(seq "$runs"); do t+=("$(run_timed "$@")"); done
  printf '%s %s\n' "$name" "$(printf '%s\n' "${t[@]}" | median)"; }
checkov_run() { timeout "$CHECKOV_TIMEOUT" checkov --quiet --compact -o json -d "$1" --skip-download; }

# Checkov over the generated tree is slow: one warm-up is skipped for it and
# it runs once unless CHECKOV_RUNS says otherwise.
CHECKOV_RUNS=${CHECKOV_RUNS:-1}
results=$( {
  measure kfm-infra "$RUNS" "$KFM" infra check infra .github --format json
  measure checkov-infra "$RUNS" checkov_run infra
  measure kfm-tree "$RUNS" "$KFM" infra check "$SCRATCH/tree" --format json
  t=(); for _ in $(seq "$CHECKOV_RUNS"); do t+=("$(run_timed checkov_run "$SCRATCH/tree")"); done
  printf 'checkov-tree %s\n' "$(printf '%s\n' "${t[@]}" | median)"
} )
echo
echo "generated tree: ${MANIFESTS} manifests, ${TF_FILES} Terraform files, ${TEXT_MB} MB of text; kfm findings: ${found}"
echo "checkov $(checkov --version 2>/dev/null | tail -1); kfm $("$KFM" --version | awk '{print $2}'); median of ${RUNS} runs (checkov tree: ${CHECKOV_RUNS})"
printf '%-15s %10s\n' run wall_s
while read -r name w; do printf '%-15s %10.3f\n' "$name" "$w"; done <<< "$results"
get() { awk -v n="$1" '$1==n{print $2}' <<< "$results"; }
printf 'infra/: checkov / kfm = %.0fx   (goal >= 50x)\n' "$(echo "$(get checkov-infra) / $(get kfm-infra)" | bc -l)"
ratio=$(echo "$(get checkov-tree) / $(get kfm-tree)" | bc -l)
if (( $(echo "$(get checkov-tree) >= $CHECKOV_TIMEOUT - 1" | bc -l) )); then
  printf 'tree:   checkov / kfm >= %.0fx (checkov cut off at %ss)   (goal >= 50x)\n' "$ratio" "$CHECKOV_TIMEOUT"
else
  printf 'tree:   checkov / kfm = %.0fx   (goal >= 50x)\n' "$ratio"
fi
