# KFM's default authorization policy.
#
# Entry point: data.kfm.authz.decision -> {allow, obligations, reason}.
#
# Shape: a request is allowed when some *grant* rule matches and no
# *blocker* stands (an active waiver can lift a waivable blocker). Anything
# else is a deny: no grant means "deny.no_grant", and a blocker names itself
# in `reason`. Obligations are collected separately and only travel with an
# allow. Every grant and blocker has a reason code that the fixtures under
# tests/ pin down.
package kfm.authz

# --- The input, read defensively: malformed fields are simply undefined. ---

roles contains r if {
	some r in input.subject.roles
	is_string(r)
}

action := input.action if is_string(input.action)

label := input.resource.policy_label if is_string(input.resource.policy_label)

dataset := input.resource.dataset if {
	is_string(input.resource.dataset)
	input.resource.dataset != ""
}

now_ns := time.parse_rfc3339_ns(input.context.time) if is_string(input.context.time)

license_id := input.resource.license.id if is_string(input.resource.license.id)

# Reads and exports touch governed data; audit reads touch the ledger.
data_action if action in {"read", "export"}

staff if {
	some r in roles
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
	some r in roles
	r in data.kfm.approved_roles
}

# Precise coordinates of sensitive locations: researchers with approval only.
precise_approved if {
	approved_for_dataset
	"researcher" in roles
}

embargo_lifted if {
	is_string(input.resource.embargo_until)
	now_ns >= time.parse_rfc3339_ns(input.resource.embargo_until)
}

license_known if data.kfm.licenses[license_id]

attribution_required if data.kfm.licenses[license_id].attribution == true

attribution_text := input.resource.license.attribution if {
	is_string(input.resource.license.attribution)
	input.resource.license.attribution != ""
}

# --- Blockers: each one alone denies. ---

blockers contains "input.malformed_subject" if not is_array(input.subject.roles)

blockers contains "input.unknown_action" if not action in data.kfm.actions

blockers contains "input.malformed_resource" if {
	data_action
	not dataset
}

blockers contains "input.malformed_time" if not now_ns

blockers contains "label.unknown" if {
	data_action
	not label in data.kfm.labels
}

blockers contains "label.quarantine" if {
	data_action
	label == "quarantine"
}

blockers contains "zone.not_served" if {
	data_action
	not input.resource.zone in data.kfm.served_zones
}

blockers contains "restricted.not_approved" if {
	data_action
	label == "restricted"
	not approved
}

blockers contains "internal.staff_only" if {
	data_action
	label == "internal"
	not staff
}

blockers contains "embargo.active" if {
	data_action
	label == "embargoed"
	not embargo_lifted
}

blockers contains "license.unknown" if {
	action == "export"
	not license_known
}

blockers contains "license.attribution_missing" if {
	data_action
	attribution_required
	not attribution_text
}

blockers contains "distribution.metadata_only" if {
	action == "export"
	input.resource.distribution == "metadata-only"
}

blockers contains "audit.auditors_only" if {
	action == "audit"
	not "auditor" in roles
}

# --- Waivers: owner, reason and expiry required; honoured until expiry. ---

waived contains w.waives if {
	some w in data.kfm.waivers
	is_string(w.id)
	is_string(w.owner)
	w.owner != ""
	is_string(w.reason)
	w.reason != ""
	is_string(w.expires)
	w.dataset == dataset
	w.waives in data.kfm.waivable
	now_ns < time.parse_rfc3339_ns(w.expires)
}

standing := blockers - waived

# --- Grants: the only ways to an allow. ---

grants contains concat(".", [action, "public"]) if {
	data_action
	label == "public"
}

grants contains concat(".", [action, "public_generalized"]) if {
	data_action
	label == "public_generalized"
}

grants contains concat(".", [action, "restricted_precise"]) if {
	data_action
	label == "restricted_sensitive_location"
	precise_approved
}

# Everyone else gets the generalized derivative.
grants contains concat(".", [action, "restricted_generalized"]) if {
	data_action
	label == "restricted_sensitive_location"
	not precise_approved
}

grants contains concat(".", [action, "restricted_approved"]) if {
	data_action
	label == "restricted"
	approved
}

grants contains concat(".", [action, "internal_staff"]) if {
	data_action
	label == "internal"
	staff
}

grants contains concat(".", [action, "embargo_lifted"]) if {
	data_action
	label == "embargoed"
	embargo_lifted
}

grants contains concat(".", [action, "embargo_waived"]) if {
	data_action
	label == "embargoed"
	not embargo_lifted
	"embargo.active" in waived
}

grants contains "audit.auditor" if {
	action == "audit"
	"auditor" in roles
}

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
	data_action
	label == "public_generalized"
}

obligation_set contains generalize if {
	data_action
	label == "restricted_sensitive_location"
	not precise_approved
}

obligation_set contains {"type": "attribution", "license": license_id, "text": attribution_text} if {
	data_action
	attribution_required
}

# A waived unknown license still travels with whatever the source said.
obligation_set contains {"type": "attribution", "license": "NOASSERTION", "text": attribution_text} if {
	action == "export"
	not license_known
	"license.unknown" in waived
}

obligation_set contains {"type": "audit_durable"} if {
	data_action
	label in {"restricted", "restricted_sensitive_location", "internal", "embargoed"}
}

obligation_set contains {"type": "audit_durable"} if action in {"export", "audit"}

obligations := [o | some o in obligation_set]

# --- The decision. ---

default decision := {"allow": false, "obligations": [], "reason": "deny.no_grant"}

decision := {"allow": true, "obligations": obligations, "reason": sort(grants)[0]} if {
	count(standing) == 0
	count(grants) > 0
}

decision := {"allow": false, "obligations": [], "reason": sort(standing)[0]} if {
	count(standing) > 0
}
