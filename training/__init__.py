"""Training: candidates, search, calibration, evaluation, explanation, tracking, registry."""
