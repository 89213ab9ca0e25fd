#!/usr/bin/env python3
"""Generates the two synthetic samples (deterministic: fixed seed).

ks-sites-synthetic: invented "archaeological sites" scattered over Kansas, to
exercise the restricted_sensitive_location path. They are NOT real sites.
ks-markers-unlicensed: invented roadside markers whose spec declares no
license (NOASSERTION), to exercise gate B's quarantine.

Run from the repository root: python3 data/samples/generate_synthetic.py
"""
import csv
import random

rng = random.Random(20261122)
# The date each invented site was "recorded", from a generator of its own so
# that the coordinates above stay what they were before the column existed.
dates = random.Random(20261206)
W, S, E, N = -101.9, 37.1, -94.8, 39.9
periods = ["Paleoindian", "Archaic", "Woodland", "Plains Village", "Protohistoric"]
kinds = ["camp", "village", "quarry", "rock art", "burial"]

with open("data/samples/ks-sites-synthetic/ks-sites-synthetic.csv", "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["site_id", "name", "period", "kind", "recorded", "lat", "lon"])
    for i in range(1, 151):
        lat = round(rng.uniform(S, N), 5)
        lon = round(rng.uniform(W, E), 5)
        recorded = f"{dates.randint(1950, 2020)}-{dates.randint(1, 12):02d}-{dates.randint(1, 28):02d}"
        w.writerow([f"SYN-{i:04d}", f"Synthetic site {i}", rng.choice(periods), rng.choice(kinds), recorded, lat, lon])

with open("data/samples/ks-markers-unlicensed/ks-markers-unlicensed.csv", "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["marker", "lat", "lon"])
    for i in range(1, 41):
        w.writerow([f"Synthetic marker {i}", round(rng.uniform(S, N), 4), round(rng.uniform(W, E), 4)])
