"""Training configuration, validated once at the entry point and passed down unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from features.catalog import FEATURE_SETS
from features.labels import CONTEXT_TARGETS, TARGETS
from modelstore.errors import ConfigError
from modelstore.candidates import MODEL_TYPES
from modelstore.explain import DEFAULT_XGB_METHOD, XGB_METHODS
from modelstore.estimand import DEFAULT_HORIZONS_MONTHS, HEADLINE_HORIZON_MONTHS
from training.censoring import CENSORING_MODELS


#: Feature set of the context targets (death): pre-operative only.
CONTEXT_FEATURE_SET = "preop"


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``training.pipeline.run`` needs.

    ``search_trials``: optuna trials per searched candidate (elastic net, random forest,
    XGBoost; the logistic baseline has no search). ``cv_folds``: folds of the grouped,
    stratified cross-validation on the training part (search, calibration, selection).
    ``horizon_months``: the headline horizon (labels for the score model, selection, the
    single number served); ``horizons_months``: every horizon of the risk curve (ascending,
    the headline among them).
    ``shap_method``: how XGBoost models are explained (``modelstore.explain.XGB_METHODS``:
    XGBoost's own path-dependent TreeSHAP, fast, or interventional TreeSHAP against a
    training background), stored with the model and named in its card.
    ``outcomes``: the targets to train, by default every outcome and then ``death`` (the
    context model: probability of death from any cause, trained on the pre-operative
    features whatever ``feature_set`` says, ``feature_set_for``).
    ``n_bootstrap``: resamples for test-set CIs. ``min_events`` / ``min_test_events``: an
    outcome with fewer events is refused. ``censoring_model``: the G of the training weights
    (``training.censoring``: ``km`` marginal Kaplan-Meier, or ``cox`` given the patient's
    clinical covariates). ``exclude_invalid``: leave out the procedures holding errors
    instead of refusing the export (``features.exclusion``).
    """

    raw_dir: Path
    outcomes: tuple[str, ...] = TARGETS
    feature_set: str = "postop"
    horizon_months: float = HEADLINE_HORIZON_MONTHS
    horizons_months: tuple[float, ...] = DEFAULT_HORIZONS_MONTHS
    seed: int = 0
    search_trials: int = 20
    test_size: float = 0.2
    cv_folds: int = 4
    candidates: tuple[str, ...] = MODEL_TYPES
    experiment_prefix: str = "refracture-"
    n_bootstrap: int = 1000
    n_jobs: int = 2
    shap_rows: int = 300
    shap_method: str = DEFAULT_XGB_METHOD
    store_dir: Path | None = None
    register: bool = True
    min_events: int = 20
    min_test_events: int = 5
    censoring_model: str = "km"
    exclude_invalid: bool = False
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [o for o in self.outcomes if o not in TARGETS]
        if not self.outcomes or bad:
            raise ConfigError(f"--outcome: unknown {bad or 'none given'}; choose from {', '.join(TARGETS)} or all")
        if self.feature_set not in FEATURE_SETS:
            raise ConfigError(f"--feature-set: choose one of {', '.join(FEATURE_SETS)}, got {self.feature_set!r}")
        unknown = [c for c in self.candidates if c not in MODEL_TYPES]
        if not self.candidates or unknown:
            raise ConfigError(f"--candidates: unknown {unknown or 'none given'}; choose from {', '.join(MODEL_TYPES)}")
        if not 1 <= self.horizon_months <= 120:
            raise ConfigError(f"--horizon-months must be within 1-120, got {self.horizon_months:g}")
        horizons = tuple(sorted({float(h) for h in (*self.horizons_months, self.horizon_months)}))
        if any(not 0.5 <= h <= 120 for h in horizons):
            raise ConfigError(f"--horizons must be within 0.5-120 months, got {', '.join(f'{h:g}' for h in horizons)}")
        # The headline horizon is always part of the curve; frozen dataclass, so set it once here.
        object.__setattr__(self, "horizons_months", horizons)
        object.__setattr__(self, "horizon_months", float(self.horizon_months))
        if not 0.05 <= self.test_size <= 0.5:
            raise ConfigError(f"--test-size must be within 0.05-0.5, got {self.test_size:g}")
        if not 2 <= self.cv_folds <= 10:
            raise ConfigError(f"--cv-folds must be within 2-10, got {self.cv_folds}")
        if not 0 <= self.search_trials <= 500:
            raise ConfigError(f"--search-trials must be within 0-500, got {self.search_trials}")
        if self.shap_method not in XGB_METHODS:
            raise ConfigError(f"--shap-method: choose one of {', '.join(XGB_METHODS)}, got {self.shap_method!r}")
        if not 50 <= self.n_bootstrap <= 10_000:
            raise ConfigError(f"--bootstrap must be within 50-10000, got {self.n_bootstrap}")
        if self.censoring_model not in CENSORING_MODELS:
            raise ConfigError(f"--censoring-model: choose one of {', '.join(CENSORING_MODELS)}, got {self.censoring_model!r}")
        if not 1 <= self.n_jobs <= 2:
            raise ConfigError(f"--n-jobs must be 1 or 2 on this machine, got {self.n_jobs}")
        if not self.experiment_prefix or any(c in self.experiment_prefix for c in "/\\"):
            raise ConfigError(f"--experiment-prefix must be non-empty text without slashes, got {self.experiment_prefix!r}")

    def feature_set_for(self, target: str) -> str:
        """Feature set of ``target``: ``feature_set`` for the outcomes, ``preop`` for the
        context (death): the probability of dying is a fact about the patient before the
        operation, and the immediate post-operative imaging (cement, leaks) must not
        lend it spurious signal."""
        return CONTEXT_FEATURE_SET if target in CONTEXT_TARGETS else self.feature_set
