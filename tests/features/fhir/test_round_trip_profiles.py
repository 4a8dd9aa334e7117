"""The round trip on 1,000 simulated procedures of each simulator profile (slow tier)."""

from __future__ import annotations

import pytest

from fhir_support import round_trip, simulated_export

PROFILES = ("xiong2021-pvp", "yassavoly2025-pkp", "site-c-older-frail-pkp")


@pytest.mark.parametrize("profile", PROFILES)
def test_round_trip_1000_per_profile(tmp_path, profile):
    round_trip(simulated_export(tmp_path, profile, 1000, 11), bundles=100)
