# KFM's default authorization policy.
#
# Entry point: data.kfm.authz.decision -> {allow, obligations, reason}.
#
# What each policy label requires, grants and obliges is the table
# `label_rules` in data.json; this file evaluates it. A request is denied by
# the first *blocker* that stands, in the order written below (malformed
# input, then the resource, then the caller's rights, then the license); an
# active waiver lifts a waivable blocker. With no blocker, the *grant* names
# why the request is allowed and the obligations travel with it. A label
# missing from the table is a deny. Every grant and blocker has a reason
# code that the fixtures under tests/ pin down.
#
# Written for speed as well as for reading (every statement costs ~0.15 µs
# in regorus's VM, see benches/policy.rs in kfm-policy): the blockers and
# the grant are ordered `else` chains that stop at the first answer, and
# label-specific rules are table lookups rather than one rule per label.
package kfm.authz

# --- Facts about the request, read defensively: a malformed field is
# --- undefined, and every rule below treats undefined as "not allowed".

# The label's row of the table; undefined for an unknown label.
label_rule := data.kfm.label_rules[input.resource.policy_label]

dataset := input.resource.dataset if {
	is_string(input.resource.dataset)
	input.resource.dataset != ""
}

now_ns := time.parse_rfc3339_ns(input.context.time) if is_string(input.context.time)

staff if {
	some r in input.subject.roles
	r in data.kfm.staff_roles
}

# The subject holds an approved-access attribute for this very dataset.
approved_for_dataset if {
	is_array(input.subject.attributes.approved_access)
	some d in input.subject.attributes.approved_access
	d == dataset
}

approved if {
	approved_for_dataset
	some r in input.subject.roles
	r in data.kfm.approved_roles
}

embargo_lifted if now_ns >= time.parse_rfc3339_ns(input.resource.embargo_until)

# Does the caller meet what the label requires?
requirement_met if label_rule.requires == "anyone"

requirement_met if {
	label_rule.requires == "approved"
	approved
}

requirement_met if {
	label_rule.requires == "staff"
	staff
}

requirement_met if {
	label_rule.requires == "embargo_lifted"
	embargo_lifted
}

requirement_met if {
	label_rule.requires == "embargo_lifted"
	"embargo.active" in waived
}

# Precise coordinates of sensitive locations: researchers with approval only.
precise if {
	label_rule.precise_to == "approved_researcher"
	"researcher" in input.subject.roles
	approved_for_dataset
}

license_known if data.kfm.licenses[input.resource.license.id]

attribution_required if data.kfm.licenses[input.resource.license.id].attribution == true

attribution_text := input.resource.license.attribution if {
	is_string(input.resource.license.attribution)
	input.resource.license.attribution != ""
}

# --- Waivers: owner, reason and expiry required; honoured until expiry. ---

waived contains w.waives if {
	some w in data.kfm.waivers
	w.dataset == dataset
	w.waives in data.kfm.waivable
	is_string(w.id)
	is_string(w.owner)
	w.owner != ""
	is_string(w.reason)
	w.reason != ""
	now_ns < time.parse_rfc3339_ns(w.expires)
}

# --- Blockers, in order: the first that stands is the reason for a deny. ---

blocker := "input.malformed_subject" if {
	not is_array(input.subject.roles)
} else := "input.unknown_action" if {
	not input.action in data.kfm.actions
} else := "input.malformed_time" if {
	not now_ns
} else := "audit.auditors_only" if {
	input.action == "audit"
	not "auditor" in input.subject.roles
} else := "steward.stewards_only" if {
	# The truth-path view names every dataset, quarantined ones included,
	# and what their gates found: for data stewards only.
	input.action == "steward"
	not "steward" in input.subject.roles
} else := data_blocker if {
	not input.action in role_actions
}

# Actions on something other than a dataset: decided on roles alone.
role_actions := {"audit", "steward"}

data_blocker := "input.malformed_resource" if {
	not dataset
} else := "label.unknown" if {
	not label_rule
} else := "zone.not_served" if {
	not input.resource.zone in data.kfm.served_zones
} else := "release.withdrawn" if {
	# A version the release pointer no longer names (superseded, or rolled
	# back from): staff may still resolve it, marked as withdrawn.
	input.resource.release == "withdrawn"
	not staff
} else := label_rule.blocker if {
	not requirement_met
} else := "distribution.metadata_only" if {
	input.action == "export"
	input.resource.distribution == "metadata-only"
} else := "license.unknown" if {
	input.action == "export"
	not license_known
	not "license.unknown" in waived
} else := "license.attribution_missing" if {
	attribution_required
	not attribution_text
}

# --- The grant: why a request that no blocker stopped is allowed. ---

grant := "audit.auditor" if {
	input.action == "audit"
} else := "steward.steward" if {
	input.action == "steward"
} else := concat(".", [input.action, label_rule.precise_grant]) if {
	precise
} else := concat(".", [input.action, label_rule.waived_grant]) if {
	label_rule.waived_grant
	not embargo_lifted
} else := concat(".", [input.action, label_rule.grant])

# --- Obligations. ---

generalize := o if {
	g := input.resource.generalization
	g.method == "grid"
	is_number(g.degrees)
	g.degrees > 0
	g.degrees <= 10
	o := {"type": "generalize", "method": "grid", "degrees": g.degrees}
} else := o if {
	g := input.resource.generalization
	g.method == "h3"
	is_number(g.resolution)
	g.resolution >= 0
	g.resolution <= 15
	o := {"type": "generalize", "method": "h3", "resolution": g.resolution}
} else := data.kfm.generalization_default

obligation_set contains generalize if {
	not input.action in role_actions
	label_rule.generalize == true
	not precise
}

obligation_set contains {"type": "attribution", "license": input.resource.license.id, "text": attribution_text} if {
	not input.action in role_actions
	attribution_required
}

# A waived unknown license still travels with whatever the source said.
obligation_set contains {"type": "attribution", "license": "NOASSERTION", "text": attribution_text} if {
	input.action == "export"
	not license_known
}

# Restricted reads, every export, every audit read and every steward's
# view wait for a durable ledger append before the answer leaves.
obligation_set contains {"type": "audit_durable"} if {
	input.action in {"export", "audit", "steward"}
}

obligation_set contains {"type": "audit_durable"} if {
	input.action == "read"
	label_rule.audit == true
}

obligations := [o | some o in obligation_set]

# --- The decision. ---

default decision := {"allow": false, "obligations": [], "reason": "deny.no_grant"}

decision := {"allow": false, "obligations": [], "reason": blocker}

decision := {"allow": true, "obligations": obligations, "reason": grant} if {
	not blocker
}
