"""Scoring flat records with the loaded models: risk curves, risk bands, explanations.

Shared by the HTTP service and ``refracture predict``, so a file scored in batch and the
same records sent over HTTP get the same numbers. Features come only from the model
artifact (``RefractureModel.features``, which runs ``features.assemble``): when the
outcome models share a feature set the features are computed once, by the first model,
and handed to each model's ``proba_from_features`` / ``explain_features``: one
vectorised call per outcome for a whole batch.

The context model (``death``, when one is served) is scored in the same pass: each
record's ``context.death`` is its probability of death from any cause by
``CONTEXT_HORIZON_MONTHS`` (24), with the model version; it is not explained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import FEATURES_BY_NAME
from features.assemble import select_features
from features.labels import CONTEXT_TARGETS, DEATH_TARGET
from features.records import missing_fields
from modelstore.risk_bands import bands_of
from serving.config import DEFAULT_RISK_BANDS

TOP_FACTORS = 3
#: The horizon of the served death context (months): the headline of the fracture risks.
CONTEXT_HORIZON_MONTHS = 24.0


#: XGBoost threads per model in the service, to predict and to explain: micro-batches of a
#: few records gain nothing from a second thread (XGBoost splits rows in blocks of 64) and
#: its OpenMP waits cost the core the HTTP path needs (measured: /explain at 32 clients
#: served 194-208 req/s on one thread, 92-144 on two; bench/README.md, issue 14).
SERVING_THREADS = 1


def curve_key(months: float) -> str:
    """The JSON key of a horizon in a curve: '6' for 6 months, '1.5' for 1.5."""
    return f"{float(months):g}"


def use_threads(models: list["LoadedModel"], n_threads: int, explain_threads: int | None = None) -> None:
    """Threads each boosted-tree model predicts with, and explains with (default the same)."""
    for m in models:
        if hasattr(m.model.scorer, "set_threads"):
            m.model.scorer.set_threads(n_threads, explain_threads)


@dataclass(frozen=True)
class LoadedModel:
    """One outcome's model, pinned to a registry version."""

    outcome: str
    name: str
    version: str
    model: Any  # modelstore.model.RefractureModel
    run_id: str | None = None
    source: str = "registry"
    #: The version's drift reference when it came with the model (a Bento carries it beside
    #: the model files); None: ask the registry (``serving.monitoring.drift_metrics.served_reference``).
    drift_reference: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def ref(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id}


@dataclass
class ServedModels:
    """The served models: one per outcome (``models``, in order) and the optional context
    model (``death``): features, probabilities, risk bands, explanations and the death
    context for frames of flat records.

    ``models`` may be given with the death model among them (as ``serving.scoring.loading``
    returns them): it is moved to ``death`` at construction, so ``models`` holds only the
    outcome models. ``death`` is None when no death model is served; answers then carry no
    ``context``."""

    models: list[LoadedModel]
    risk_bands: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RISK_BANDS))
    death: LoadedModel | None = None

    def __post_init__(self) -> None:
        context = [m for m in self.models if m.outcome in CONTEXT_TARGETS]
        if len(context) > 1 or (context and self.death is not None):
            raise ValueError("more than one death model given")
        self.models = [m for m in self.models if m.outcome not in CONTEXT_TARGETS]
        self.death = self.death or (context[0] if context else None)

    @property
    def all_models(self) -> list[LoadedModel]:
        """The outcome models, then the death model when served."""
        return self.models + ([self.death] if self.death is not None else [])

    @property
    def outcomes(self) -> list[str]:
        return [m.outcome for m in self.models]

    @property
    def versions(self) -> dict[str, str]:
        """Registry version of every served model (the death model's under ``death``)."""
        return {m.outcome: m.version for m in self.all_models}

    def features(self, flat: pd.DataFrame, typed: dict[str, np.ndarray] | None = None) -> dict[str, pd.DataFrame]:
        """Features per served model (outcomes and death), computed once per distinct
        feature set. ``typed``: the records as ``features.records.inspect_records`` read
        them (saves reading again). A model whose features are a subset of a set already
        computed (death's pre-operative set within the post-operative one) takes those
        columns: every feature is a pure function of its record, so they are the same."""
        by_set: dict[tuple[str, tuple[str, ...]], pd.DataFrame] = {}
        out: dict[str, pd.DataFrame] = {}
        for m in self.all_models:
            key = (m.model.feature_set, tuple(m.model.feature_names))
            if key not in by_set:
                wider = next((X for X in by_set.values() if set(key[1]) <= set(X.columns.tolist())), None)
                by_set[key] = select_features(wider, key[1]) if wider is not None else m.model.features(flat, typed)
            out[m.outcome] = by_set[key]
        return out

    def death_probability(self, feats: dict[str, pd.DataFrame]) -> np.ndarray | None:
        """Probability of death from any cause by ``CONTEXT_HORIZON_MONTHS`` per record (the
        features of ``features``), or None without a death model."""
        if self.death is None:
            return None
        return self.death.model.proba_from_features(feats[DEATH_TARGET], CONTEXT_HORIZON_MONTHS)

    def death_context(self, feats: dict[str, pd.DataFrame]) -> list[dict[str, Any]] | None:
        """Per record ``{"death": {probability, horizon_months, model}}``, or None without a
        death model."""
        p = self.death_probability(feats)
        if p is None:
            return None
        ref = self.death.ref
        return [{"death": {"probability": float(v), "horizon_months": CONTEXT_HORIZON_MONTHS, "model": ref}}
                for v in p.tolist()]

    def score(self, flat: pd.DataFrame, procedure_ids: list[str], explain: bool = False,
              first_index: int = 0, typed: dict[str, np.ndarray] | None = None,
              horizon_months: float | None = None, warnings: list[list[dict[str, Any]]] | None = None
              ) -> list[dict[str, Any]]:
        """One result per record (dicts shaped as ``serving.http.schemas.RecordPrediction`` /
        ``RecordExplanation``): per outcome the risk curve, the headline probability and
        band, and with ``explain`` the SHAP explanation at ``horizon_months`` (default: the
        headline, 24 months); ``context.death`` when a death model is served (never
        explained); ``warnings``, per record, the contract's warnings about its values
        (``features.records.inspect_records``; empty lists when not given). ``flat`` holds
        valid flat records (``check_records`` clean)."""
        flat = _positional(flat)
        feats = self.features(flat, typed)
        absent = missing_fields(typed) if typed is not None else None
        per_outcome: dict[str, list[dict[str, Any]]] = {}
        for m in self.models:
            X = feats[m.outcome]
            headline = float(m.model.horizon_months)
            expl, explained, explanations = None, None, None
            if explain:
                explained = headline if horizon_months is None else float(horizon_months)
                expl = m.model.explain_features(X, explained)
                explanations = explanation_items(expl)
            # The explainer's score, when it computed one to check its sum, is the model's
            # (``score_from_features``, bit for bit): not routed through the trees again.
            score = expl.score if expl is not None and expl.score is not None else m.model.score_from_features(X)
            curve = m.model.curve_from_score(score, X.index)
            keys = [curve_key(h) for h in m.model.horizons_months]
            values = curve.to_numpy()
            proba = values[:, list(m.model.horizons_months).index(headline)]
            if explain:
                explained_p = values[:, list(m.model.horizons_months).index(explained)]
            missing = m.model.missing_inputs_from_features(flat, X, absent)
            bands = bands_of(proba, self.risk_bands.get(m.outcome, DEFAULT_RISK_BANDS[m.outcome])).tolist()
            ref = m.ref
            items = []
            for i, (p, curve_values) in enumerate(zip(proba.tolist(), values.tolist())):
                item: dict[str, Any] = {
                    "probability": p,
                    "horizon_months": headline,
                    "risk_band": bands[i],
                    "curve": dict(zip(keys, curve_values)),
                    "model": ref,
                    "missing_inputs": [{"field": d.get("field", ""), "handling": d.get("handling", "")} for d in missing[i]],
                }
                if explanations is not None:
                    item["explanation"] = {"horizon_months": explained, "probability": float(explained_p[i]),
                                           **explanations[i]}
                items.append(item)
            per_outcome[m.outcome] = items
        context = self.death_context(feats)
        answers = [
            {"record": first_index + i, "procedure_id": procedure_ids[i],
             "outcomes": {o: per_outcome[o][i] for o in per_outcome},
             "warnings": warnings[i] if warnings is not None else []}
            for i in range(len(flat))
        ]
        if context is not None:
            for answer, item in zip(answers, context):
                answer["context"] = item
        return answers

    def probabilities(self, flat: pd.DataFrame, typed: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """Probabilities only, one column per outcome (the batch-file path)."""
        flat = _positional(flat)
        feats = self.features(flat, typed)
        return pd.DataFrame({m.outcome: m.model.proba_from_features(feats[m.outcome]) for m in self.models})


def _positional(flat: pd.DataFrame) -> pd.DataFrame:
    """``flat`` indexed 0..n-1: itself when it already is (a request batch always is), as
    ``reset_index`` copies every column (~0.3 ms for the ~80 object columns of a batch)."""
    index = flat.index
    if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None:
        return flat
    return flat.reset_index(drop=True)


# ---------------------------------------------------------------------- explanations


#: Units that read badly after a number ("18.6 ratio"); the number is shown alone.
_SILENT_UNITS = {"count", "0–2", "ratio", "index"}


def _value_text(value: float | None, unit: str, kind: str) -> str:
    """A feature value in words: '62 HU', '4 °', 'yes', 'missing'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if kind == "binary":
        return "yes" if value >= 0.5 else "no"
    shown = "" if unit in _SILENT_UNITS else unit
    if kind == "count":
        return f"{value:g} {shown}".strip()
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {shown}".strip()


def factor_text(label: str, value_text: str, contribution: float) -> str:
    """'Adjacent vertebra HU (lowest) 62 HU raises the risk (odds × 1.52)'."""
    direction = "raises" if contribution > 0 else "lowers"
    odds = math.exp(contribution)
    if value_text in ("yes", "no"):
        subject = label if value_text == "yes" else f"No {label[0].lower()}{label[1:]}"
    elif value_text == "missing":
        subject = f"{label} not available"
    else:
        subject = f"{label} {value_text}"
    return f"{subject} {direction} the risk (odds × {odds:.2f})"


def explanation_items(expl: Any) -> list[dict[str, Any]]:
    """Per record of ``expl`` (``modelstore.explain.Explanation``): the base value, every
    feature's contribution and the top factors.

    What depends on the feature alone (kind, label, unit) is looked up once, and the
    values are read as one array: reading them cell by cell from the frame (``iloc``) cost
    ~10 µs a cell, ~40 ms for an explained batch of 8 records and 3 outcomes.
    """
    specs = [FEATURES_BY_NAME.get(name) for name in expl.feature_names]
    kinds = [spec.kind if spec else "continuous" for spec in specs]
    labels = [spec.label if spec else name for spec, name in zip(specs, expl.feature_names)]
    units = [unit or "" for unit in expl.units]
    cells = expl.feature_values.to_numpy()
    missing = pd.isna(cells).tolist()
    orders = np.argsort(-expl.values, axis=1, kind="stable")
    base_value = float(expl.base_value)
    return [_explanation(expl, row_values, row_cells, row_missing, order, kinds, labels, units, base_value)
            for row_values, row_cells, row_missing, order in zip(expl.values, cells.tolist(), missing, orders)]


def _explanation(expl: Any, values: np.ndarray, cells: list, missing: list[bool], order: np.ndarray,
                 kinds: list[str], labels: list[str], units: list[str], base_value: float) -> dict[str, Any]:
    """One record's explanation (``explanation_items``): ``values`` its contributions,
    ``cells`` / ``missing`` its feature values, ``order`` its features by contribution."""
    contributions = []
    for j, (name, contribution) in enumerate(zip(expl.feature_names, values.tolist())):
        value = None if missing[j] else float(cells[j])
        contributions.append({
            "feature": name,
            "display_name": expl.display_names[j],
            "value": value,
            "unit": units[j],
            "value_text": _value_text(value, units[j], kinds[j]),
            "contribution": contribution,
        })
    raising = [j for j in order.tolist() if values[j] > 1e-9][:TOP_FACTORS]
    lowering = [j for j in order[::-1].tolist() if values[j] < -1e-9][:TOP_FACTORS]

    def factor(j: int) -> dict[str, Any]:
        c = contributions[j]
        return {"feature": c["feature"], "text": factor_text(labels[j], c["value_text"], c["contribution"]),
                "contribution": c["contribution"]}

    return {
        "base_value": base_value,
        "raising": [factor(j) for j in raising],
        "lowering": [factor(j) for j in lowering],
        "contributions": contributions,
    }
