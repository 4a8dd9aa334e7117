"""Cards (serving.cds_hooks.cards) on hand-made answers: the CDS Hooks 2.0 card rules, the
indicator from the risk band, the summary under 140 characters at its longest, the detail's
curve, factors and association statement, and the link that carries the record."""

from __future__ import annotations

import base64
import itertools
import json

import pytest

from serving.cds_hooks.cards import ASSOCIATION_NOTE, EXTENSION, card, card_problems, indicator, summary

OUTCOMES = ("cemented_refracture", "adjacent_fracture", "remote_fracture")
RECORD = {"patient": {"sex": "F"}, "procedure": {"procedure_id": "p-1", "level": "T12", "technique": "PKP",
                                                 "surgery_date": "2024-03-02"}, "imaging": {"preop": {}, "postop": {}}}


def _item(p24: float, band: str, outcome: str) -> dict:
    return {"probability": p24, "horizon_months": 24.0, "risk_band": band,
            "curve": {"3": p24 / 4, "6": p24 / 2, "12": p24 * 0.8, "24": p24},
            "model": {"name": f"refracture-{outcome}", "version": "3", "run_id": "r"},
            "missing_inputs": [{"field": "imaging.preop.hu_upper_adjacent", "handling": "imputed"}],
            "explanation": {"horizon_months": 24.0, "probability": p24, "base_value": -2.0,
                            "raising": [{"feature": "hu_index_preop", "text": "Treated vertebra HU before surgery 62 HU "
                                                                              "raises the risk (odds × 1.12)",
                                         "contribution": 0.11}],
                            "lowering": [{"feature": "bmi", "text": "Body-mass index 22.4 kg/m² lowers the risk "
                                                                    "(odds × 0.62)", "contribution": -0.48}],
                            "contributions": []}}


def _prediction(bands=("low", "intermediate", "high"), ps=(0.041, 0.123, 0.2)) -> dict:
    return {"record": 0, "procedure_id": "p-1",
            "outcomes": {o: _item(p, b, o) for o, p, b in zip(OUTCOMES, ps, bands)},
            "context": {"death": {"probability": 0.082, "horizon_months": 24.0,
                                  "model": {"name": "refracture-death", "version": "2", "run_id": "d"}}}}


def test_a_card_follows_the_cds_hooks_rules_and_says_what_it_must():
    c = card(RECORD, _prediction(), "https://risk.example/model", "https://risk.example")
    assert card_problems(c) == []
    assert c["indicator"] == "warning"  # one outcome in the high band
    assert c["summary"].startswith("24-month fracture risk after T12 kyphoplasty") and "adjacent 12.3% (intermediate)" in \
        c["summary"] and "cemented 4.1%" in c["summary"]
    d = c["detail"]
    assert "| 3 mo | 6 mo | 12 mo | 24 mo |" in d and "| 1.0% | 2.1% | 3.3% | 4.1% | low |" in d  # the curve
    assert "death from any cause by 24 months: 8.2%" in d
    assert ASSOCIATION_NOTE in d and "not causes" in d
    assert "Treated vertebra HU before surgery 62 HU raises the risk" in d and "lowers the risk" in d
    assert "imaging.preop.hu_upper_adjacent" in d and "refracture-death v2" in d
    assert c["source"] == {"label": "refracture-risk model card", "url": "https://risk.example/model"}
    (link,) = c["links"]
    assert link["type"] == "absolute" and link["url"].startswith("https://risk.example/ui/#record=")
    token = link["url"].split("#record=", 1)[1]
    assert json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == RECORD
    numbers = c["extension"][EXTENSION]
    assert numbers["procedure_id"] == "p-1" and numbers["outcomes"]["remote_fracture"]["curve"]["24"] == 0.2
    assert numbers["death"]["probability"] == 0.082 and numbers["outcomes"]["adjacent_fracture"]["risk_band"] == "intermediate"


def test_the_indicator_comes_from_the_highest_band_and_is_never_critical():
    for bands in itertools.product(("low", "intermediate", "high"), repeat=3):
        item = {o: {"risk_band": b} for o, b in zip(OUTCOMES, bands)}
        assert indicator(item) == ("warning" if "high" in bands else "info")


@pytest.mark.parametrize("level,technique", [("T12", "PKP"), ("L5", "PVP"), ("T1", None)])
def test_the_summary_stays_under_140_characters_at_its_longest(level, technique):
    outcomes = {o: {"probability": 0.9999, "risk_band": "intermediate"} for o in OUTCOMES}
    text = summary({"level": level, "technique": technique}, outcomes)
    assert len(text) < 140 and "99.99%" not in text and "100.0%" in text


def test_without_a_public_url_the_card_has_no_link_and_no_empty_fields():
    c = card(RECORD, _prediction(bands=("low", "low", "low")), None, None)
    assert "links" not in c and c["source"] == {"label": "refracture-risk model card"}
    assert c["indicator"] == "info" and card_problems(c) == []


def test_card_problems_catches_what_breaks_the_rules():
    good = card(RECORD, _prediction(), "https://risk.example/model", "https://risk.example")
    assert card_problems({**good, "summary": "x" * 140})
    assert card_problems({**good, "indicator": "hard-stop"})
    assert card_problems({**good, "source": {"url": "https://x"}})
    assert card_problems({**good, "uuid": "not-a-uuid"})
    assert card_problems({**good, "links": [{"label": "l", "url": "https://x", "type": "relative"}]})
    assert card_problems({**good, "detail": ""})
