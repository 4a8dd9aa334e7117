"""Input and prediction drift on ``/metrics`` (metric names: docs/monitoring.md section 4,
used by docs/prometheus/refracture-drift.rules.yml).

- ``refracture_input_value{input}``: histogram of each numeric input, buckets = the
  served model's training reference deciles (``features.drift.histogram_buckets``);
- ``refracture_input_missing_total{input}``: records scored whose input was missing;
- ``refracture_records_scored_total``: records scored (the denominator);
- ``refracture_input_level_total{input, level}``: categorical inputs, ``level`` only from
  the reference's levels and ``(other)`` (``category_levels``), never free text;
- ``refracture_predicted_risk{outcome, horizon_months}``: histogram of the predicted risk
  (``PREDICTED_RISK_BUCKETS``);
- gauges ``refracture_input_reference_share{input, le}`` and
  ``refracture_input_reference_missing_share{input}``: the reference itself, so an alert
  compares live and training shares in PromQL.

No label holds an identifier, a date or a record's value: labels are contract names, the
horizon, reference bucket bounds and reference levels. One Prometheus histogram has one
bucket set, so each numeric input gets its own ``Histogram`` object under the same name,
unregistered: under BentoML (Prometheus multiprocess mode, set up before the service class
is built) every object writes its samples to the shared files that ``/metrics`` merges by
name; a single-process ``registry`` (tests, ``refracture predict``) gets ``collect``.

The reference comes with the model version (``modelstore.drift_reference``, tag
``drift_reference``); the first served model that has one gives the input buckets (all
outcomes are trained on the same export). Without any, only the predicted-risk and
record counters are exported (logged once).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import mlflow.artifacts
import numpy as np

from features.drift import OTHER, PREDICTED_RISK_BUCKETS, _as_levels, category_levels, histogram_buckets, \
    reference_cumulative_shares
from modelstore.drift_reference import REFERENCE_ARTIFACT

logger = logging.getLogger(__name__)


class DriftMetrics:
    """Prometheus drift metrics for ``reference`` (or None); ``registry``: a
    ``prometheus_client.CollectorRegistry`` to expose them in single-process mode."""

    def __init__(self, reference: dict[str, Any] | None, outcomes: Iterable[str], registry=None):
        # Imported here, not at module import: BentoML points prometheus_client at its
        # multiprocess folder before the service starts, and the value class is fixed at import.
        import prometheus_client as pc

        self._pc = pc
        self.reference = reference
        self.outcomes = list(outcomes)
        self.records = pc.Counter("refracture_records_scored", "Records scored (the missing share's denominator).",
                                  registry=None)
        self.risk = pc.Histogram("refracture_predicted_risk", "Predicted cumulative incidence, death competing.",
                                 ["outcome", "horizon_months"], buckets=list(PREDICTED_RISK_BUCKETS), registry=None)
        self.inputs: dict[str, Any] = {}
        self.levels: dict[str, list[str]] = {}
        self.kinds: dict[str, str] = {}
        self.missing = pc.Counter("refracture_input_missing", "Records scored whose input was missing.", ["input"],
                                  registry=None)
        self.level_counter = pc.Counter("refracture_input_level", "Records per level of a categorical input.",
                                        ["input", "level"], registry=None)
        self.ref_share = pc.Gauge("refracture_input_reference_share", "Training reference cumulative share at le.",
                                  ["input", "le"], registry=None, multiprocess_mode="max")
        self.ref_missing = pc.Gauge("refracture_input_reference_missing_share", "Training reference missing share.",
                                    ["input"], registry=None, multiprocess_mode="max")
        if reference is None:
            logger.warning("no drift reference with the served models: /metrics has no input histograms")
        else:
            for name, bounds in histogram_buckets(reference).items():
                if name != "predicted_risk":
                    self.inputs[name] = pc.Histogram("refracture_input_value", "Numeric model input, reference buckets.",
                                                     ["input"], buckets=bounds, registry=None)
            self.levels = category_levels(reference)
            for name, entry in reference["inputs"].items():
                self.kinds[name] = entry["contract_kind"]
                self.ref_missing.labels(input=name).set(entry["missing_share"])
            for name, shares in reference_cumulative_shares(reference).items():
                for le, share in shares.items():
                    self.ref_share.labels(input=name, le=le).set(share)
        if registry is not None:
            registry.register(self)

    def observe(self, typed: dict[str, np.ndarray], scored: list[dict[str, Any]]) -> None:
        """Count one scored batch: ``typed`` (``features.records.inspect_records`` values of
        the scored records) and ``scored`` (the per-record results, ``outcomes`` ->
        ``probability`` at ``horizon_months`` and, when present, ``curve`` as
        ``{"p_<m>m": risk}`` or a list of ``{"horizon_months", "probability"}``)."""
        try:
            self._observe(typed, scored)
        except Exception as exc:  # noqa: BLE001 - monitoring never fails an answer; log the type only
            logger.error("drift metrics not updated: %s", type(exc).__name__)

    def _observe(self, typed: dict[str, np.ndarray], scored: list[dict[str, Any]]) -> None:
        n = len(scored)
        if n == 0:
            return
        self.records.inc(n)
        for name, kind in self.kinds.items():
            values = typed.get(name)
            if values is None:
                continue
            present = _present(values)
            if (~present).any():
                self.missing.labels(input=name).inc(int((~present).sum()))
            if name in self.inputs:
                _observe_many(self.inputs[name].labels(input=name), np.asarray(values[present], dtype="float64"))
            elif name in self.levels:
                allowed = set(self.levels[name])
                seen = _as_levels(values[present], kind)
                for level, count in zip(*np.unique(np.array([x if x in allowed else OTHER for x in seen], dtype=object)
                                                   .astype(str), return_counts=True)):
                    self.level_counter.labels(input=name, level=level).inc(int(count))
        for item in scored:
            for outcome, res in item.get("outcomes", {}).items():
                for horizon, p in _risks(res):
                    self.risk.labels(outcome=outcome, horizon_months=f"{horizon:g}").observe(p)

    # single-process exposition: one family per name, every input's samples in it
    def collect(self):
        families: dict[str, Any] = {}
        metrics = [self.records, self.risk, self.missing, self.level_counter, self.ref_share, self.ref_missing,
                   *self.inputs.values()]
        for metric in metrics:
            for fam in metric.collect():
                if fam.name in families:
                    families[fam.name].samples.extend(fam.samples)
                else:
                    families[fam.name] = fam
        return list(families.values())


def _observe_many(hist, x: np.ndarray) -> None:
    """``hist.observe`` for every value of ``x`` in one pass: a batch of 1,000 records
    times ~40 inputs would otherwise be 40,000 Python calls on the scoring path. Same
    bucket rule as prometheus_client (a value equal to a bound counts in that bucket)."""
    bounds = getattr(hist, "_upper_bounds", None)
    if bounds is None or not hasattr(hist, "_buckets") or not hasattr(hist, "_sum"):
        for v in x:
            hist.observe(v)
        return
    counts = np.bincount(np.searchsorted(np.asarray(bounds, dtype="float64"), x, side="left"), minlength=len(bounds))
    for i, c in enumerate(counts):
        if c:
            hist._buckets[i].inc(int(c))
    hist._sum.inc(float(x.sum()))


def _present(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    if values.dtype.kind == "M":
        return ~np.isnat(values)
    return np.fromiter((v is not None and v == v for v in values), dtype=bool, count=len(values))


def _risks(res: dict[str, Any]) -> list[tuple[float, float]]:
    """(horizon in months, risk) pairs of one outcome's result."""
    curve = res.get("curve")  # {"3": p, "6": p, ...}: months -> risk (serving.schemas, version 2)
    if isinstance(curve, dict) and curve:
        return [(float(k), float(v)) for k, v in curve.items()]
    if "probability" in res and "horizon_months" in res:
        return [(float(res["horizon_months"]), float(res["probability"]))]
    return []


def served_reference(models) -> dict[str, Any] | None:
    """The drift reference of the first served model whose version stores one (None if none).

    A model that brought its reference along (``LoadedModel.drift_reference``: a Bento
    carries ``drift_reference.json`` beside each model's files, written by
    ``serving.loading.export_to_bentoml``) gives it without any registry call. Otherwise
    it is read from the version's run in the registry, except for Bento models: a Bento
    serves without the registry by design, and asking would stall the start on the client's
    retries to an unreachable server (a Bento built before the reference was packed then
    exports only the predicted-risk histograms and missing-input counters)."""
    for m in models:
        ref = getattr(m, "drift_reference", None)
        if ref:
            return ref
    for m in models:
        if not getattr(m, "run_id", None) or str(getattr(m, "source", "")).startswith("bento:"):
            continue
        try:
            return mlflow.artifacts.load_dict(f"runs:/{m.run_id}/{REFERENCE_ARTIFACT}")
        except Exception:  # noqa: BLE001 - an older version without a stored reference: no input histograms
            continue
    return None
