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
from collections import Counter
from dataclasses import dataclass, field
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
        self._risk_bounds = _upper_bounds(PREDICTED_RISK_BUCKETS)
        self._input_bounds: dict[str, list[float]] = {}
        self._counter: DriftCounter | None = None
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
                    self._input_bounds[name] = _upper_bounds(bounds)
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

    @property
    def counter(self) -> "DriftCounter":
        """What ``observe`` counts, as a plain picklable object: a scoring process counts a
        batch with it (``DriftCounter.count``) and this process adds the counts (``add``)."""
        if self._counter is None:
            self._counter = DriftCounter(
                buckets=self._input_bounds, levels=self.levels, kinds=self.kinds, risk_buckets=self._risk_bounds)
        return self._counter

    def observe(self, typed: dict[str, np.ndarray], scored: list[dict[str, Any]]) -> None:
        """Count one scored batch: ``typed`` (``features.records.inspect_records`` values of
        the scored records) and ``scored`` (the per-record results, ``outcomes`` ->
        ``probability`` at ``horizon_months`` and, when present, ``curve`` as
        ``{"p_<m>m": risk}`` or a list of ``{"horizon_months", "probability"}``)."""
        self.add(self.counter.count_or_none(typed, scored))

    def add(self, counts: "DriftCounts | None") -> None:
        """Add a batch's counts (``DriftCounter.count``) to the metrics."""
        if counts is None or counts.records == 0:
            return
        try:
            self.records.inc(counts.records)
            for name, n in counts.missing.items():
                self.missing.labels(input=name).inc(n)
            for name, (per_bucket, total) in counts.inputs.items():
                _add_buckets(self.inputs[name].labels(input=name), per_bucket, total)
            for name, per_level in counts.levels.items():
                for level, n in per_level.items():
                    self.level_counter.labels(input=name, level=level).inc(n)
            for (outcome, horizon), (per_bucket, total) in counts.risks.items():
                _add_buckets(self.risk.labels(outcome=outcome, horizon_months=horizon), per_bucket, total)
        except Exception as exc:  # noqa: BLE001 - as above
            logger.error("drift metrics not updated: %s", type(exc).__name__)

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


def _upper_bounds(buckets) -> list[float]:
    """A histogram's bucket upper bounds as prometheus_client sets them (+Inf added last)."""
    bounds = [float(b) for b in buckets]
    return bounds if bounds and bounds[-1] == float("inf") else bounds + [float("inf")]


def _bucket_counts(bounds: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Values per bucket of upper ``bounds`` (the last +Inf), prometheus_client's rule: a
    value equal to a bound counts in that bucket."""
    return np.bincount(np.searchsorted(bounds, x, side="left"), minlength=len(bounds))


def _add_buckets(hist, per_bucket: np.ndarray, total: float) -> None:
    """Add bucket counts and their sum to a histogram in one pass: a batch of 1,000 records
    times ~40 inputs would otherwise be 40,000 ``observe`` calls on the scoring path."""
    for i, c in enumerate(per_bucket):
        if c:
            hist._buckets[i].inc(int(c))
    hist._sum.inc(float(total))


@dataclass
class DriftCounts:
    """One batch's drift counts (``DriftCounter.count``), added by ``DriftMetrics.add``."""

    records: int
    missing: dict[str, int] = field(default_factory=dict)
    #: numeric input -> (records per bucket, sum of the values)
    inputs: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)
    #: categorical input -> level (a reference level or ``(other)``) -> records
    levels: dict[str, dict[str, int]] = field(default_factory=dict)
    #: (outcome, horizon label) -> (records per predicted-risk bucket, sum of the risks)
    risks: dict[tuple[str, str], tuple[np.ndarray, float]] = field(default_factory=dict)


@dataclass
class DriftCounter:
    """Counts a scored batch for the drift metrics, with no Prometheus object: the bucket
    bounds (+Inf last), reference levels and contract kinds of ``DriftMetrics``. Plain
    data, so a scoring process holds one and sends back only the counts."""

    buckets: dict[str, list[float]]
    levels: dict[str, list[str]]
    kinds: dict[str, str]
    risk_buckets: list[float]

    def count_or_none(self, typed: dict[str, np.ndarray], scored: list[dict[str, Any]]) -> DriftCounts | None:
        """``count``, or None (logged, type only) if counting fails: monitoring never fails an answer."""
        try:
            return self.count(typed, scored)
        except Exception as exc:  # noqa: BLE001
            logger.error("drift metrics not updated: %s", type(exc).__name__)
            return None

    def count(self, typed: dict[str, np.ndarray], scored: list[dict[str, Any]]) -> DriftCounts:
        """The counts of ``DriftMetrics.observe``'s arguments."""
        counts = DriftCounts(records=len(scored))
        if not scored:
            return counts
        for name, kind in self.kinds.items():
            values = typed.get(name)
            if values is None:
                continue
            present = _present(values)
            if (~present).any():
                counts.missing[name] = int((~present).sum())
            if name in self.buckets:
                x = np.asarray(values[present], dtype="float64")
                counts.inputs[name] = (_bucket_counts(np.asarray(self.buckets[name]), x), float(x.sum()))
            elif name in self.levels:
                allowed = set(self.levels[name])
                seen = Counter(str(x) if x in allowed else OTHER for x in _as_levels(values[present], kind))
                counts.levels[name] = {level: seen[level] for level in sorted(seen)}
        risks: dict[tuple[str, str], list[float]] = {}
        for item in scored:
            for outcome, res in item.get("outcomes", {}).items():
                for horizon, p in _risks(res):
                    risks.setdefault((outcome, f"{horizon:g}"), []).append(p)
        bounds = np.asarray(self.risk_buckets)
        for key, values in risks.items():
            x = np.asarray(values, dtype="float64")
            counts.risks[key] = (_bucket_counts(bounds, x), float(x.sum()))
        return counts


def _present(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    if values.dtype.kind == "M":
        return ~np.isnat(values)
    return np.fromiter((v is not None and v == v for v in values), dtype=bool, count=len(values))


def _risks(res: dict[str, Any]) -> list[tuple[float, float]]:
    """(horizon in months, risk) pairs of one outcome's result."""
    curve = res.get("curve")  # {"3": p, "6": p, ...}: months -> risk (serving.http.schemas, version 2)
    if isinstance(curve, dict) and curve:
        return [(float(k), float(v)) for k, v in curve.items()]
    if "probability" in res and "horizon_months" in res:
        return [(float(res["horizon_months"]), float(res["probability"]))]
    return []


def served_reference(models) -> dict[str, Any] | None:
    """The drift reference of the first served model whose version stores one (None if none).

    A model that brought its reference along (``LoadedModel.drift_reference``: a Bento
    carries ``drift_reference.json`` beside each model's files, written by
    ``serving.scoring.loading.export_to_bentoml``) gives it without any registry call. Otherwise
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
