# Rego unit tests for kfm/authz.rego (run by `kfm policy test`).
# The YAML fixtures beside this file pin whole decisions; these tests pin
# the building blocks and the properties the fixtures cannot enumerate.
package kfm.authz_test

import data.kfm.authz

base := {
	"subject": {"id": "u-1", "roles": ["public"], "attributes": {}},
	"action": "read",
	"resource": {
		"kind": "features",
		"dataset": "ks-places",
		"policy_label": "public",
		"zone": "published",
		"license": {"id": "CC0-1.0"},
	},
	"context": {"environment": "dev", "time": "2026-11-22T12:00:00Z"},
}

with_label(l) := object.union(base, {"resource": object.union(base.resource, {"policy_label": l})})

test_default_is_deny if {
	d := authz.decision with input as {}
	d.allow == false
}

test_public_read_allowed if {
	d := authz.decision with input as base
	d.allow == true
	d.reason == "read.public"
}

# Every label other than the public ones is refused to an anonymous caller
# unless it is served generalized.
test_anonymous_never_gets_precise_restricted if {
	every l in ["restricted", "internal", "embargoed", "quarantine", "no-such-label"] {
		d := authz.decision with input as with_label(l)
		d.allow == false
	}
}

test_sensitive_location_generalized_for_anonymous if {
	d := authz.decision with input as with_label("restricted_sensitive_location")
	d.allow == true
	some o in d.obligations
	o.type == "generalize"
}

# A deny never carries obligations.
test_deny_has_no_obligations if {
	d := authz.decision with input as with_label("internal")
	d.allow == false
	count(d.obligations) == 0
}

test_every_waiver_is_complete if {
	every w in data.kfm.waivers {
		is_string(w.id)
		w.owner != ""
		w.reason != ""
		time.parse_rfc3339_ns(w.expires) > 0
		w.waives in {b | some b in data.kfm.waivable}
	}
}

test_generalization_default_is_a_known_obligation if {
	data.kfm.generalization_default.type == "generalize"
	data.kfm.generalization_default.degrees > 0
}
