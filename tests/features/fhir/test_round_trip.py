"""The mapping's round trip: raw export -> FHIR -> records equals raw export -> records.

``refracture predict --raw`` reads an export with ``features.raw_records.scorable_records``;
the same export written as FHIR (``features.fhir.export``) and read back (as one Bulk export
and as one Bundle per procedure) must give every record field the same typed value.
"""

from __future__ import annotations

from fhir_support import round_trip, simulated_export


def test_round_trip_small(tmp_path):
    """The fast tier: 150 procedures of the multi-level profile, 30 of them as Bundles."""
    round_trip(simulated_export(tmp_path, "site-c-older-frail-pkp", 150, 7), bundles=30)

