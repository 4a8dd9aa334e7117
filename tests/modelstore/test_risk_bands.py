"""Risk bands: one table and one rule for the service, batch scoring and the model card."""

import numpy as np
import pytest

from features.labels import OUTCOMES
from modelstore.risk_bands import RISK_BANDS, bands_of, describe_bands, risk_band


def test_every_outcome_has_bands():
    assert set(RISK_BANDS) == set(OUTCOMES)


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_one_record_and_a_batch_get_the_same_band(outcome):
    thresholds = RISK_BANDS[outcome]
    p = np.array([0.0, thresholds[0] - 1e-9, thresholds[0], thresholds[1] - 1e-9, thresholds[1], 1.0])
    assert list(bands_of(p, thresholds)) == [risk_band(float(x), thresholds) for x in p] == [
        "low", "low", "intermediate", "intermediate", "high", "high"]


def test_bands_in_words_come_from_the_table():
    assert describe_bands("cemented_refracture") == "< 2 % low, 2–7.5 % intermediate, ≥ 7.5 % high"
