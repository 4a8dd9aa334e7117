"""``refracture performance`` around the pure parts (``training.realized``,
``training.realized_report``): the report folder, the MLflow run and the tags on each
model version it judged.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from modelstore.tracking import get_or_create_experiment
from training.realized import HEADLINE_METRICS, Realized
from training.realized_report import render_realized_report
from training.site_run import SiteResult

logger = logging.getLogger(__name__)

REALIZED_EXPERIMENT = "refracture-realized-performance"
#: Model-version tags that point at the newest realized-performance run of the version.
RUN_TAG = "realized_performance_run_id"


def build_result(realized: Realized, site: str, headline_months: float) -> SiteResult:
    """The report (HTML, figures) and its tables, nothing written."""
    report = render_realized_report(realized, site=site, headline_months=headline_months,
                                    generated_on=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    frames = {k: v for k, v in (("metrics", realized.metrics), ("calibration", realized.calibration),
                                ("decision", realized.decision), ("by_month", realized.by_month),
                                ("paired", realized.paired)) if len(v)}
    return SiteResult(frames, report.html, report.figures)


def log_realized(out_dir: Path, realized: Realized, site: str) -> str:
    """An MLflow run in ``refracture-realized-performance`` holding the report folder, with
    each version's figures as metrics (``<outcome>_v<version>_<metric>_<m>m``); every
    judged version gets the tag ``realized_performance_run_id``. Returns the run id."""
    exp = get_or_create_experiment(REALIZED_EXPERIMENT)
    m = realized.metrics
    with mlflow.start_run(experiment_id=exp, run_name=f"{site}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}") as run:
        versions = m[["outcome", "model_name", "model_version"]].drop_duplicates() if len(m) else pd.DataFrame()
        mlflow.set_tags({"site": site, **{f"version.{r.outcome}.{r.model_version}": r.model_name
                                          for r in versions.itertuples()}})
        metrics = {}
        for _, r in m.iterrows():
            key = f"{r['outcome']}_v{r['model_version']}_{{}}_{r['horizon_months']:g}m"
            metrics[key.format("matured")] = float(r["matured"])
            metrics[key.format("events")] = float(r["events"])
            for k in HEADLINE_METRICS:
                for suffix in ("", "_ci_low", "_ci_high"):
                    if np.isfinite(r[f"{k}{suffix}"]):
                        metrics[key.format(k + suffix)] = float(r[f"{k}{suffix}"])
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out_dir))
        run_id = run.info.run_id
    client = mlflow.MlflowClient()
    for r in versions.itertuples():
        try:
            client.set_model_version_tag(r.model_name, str(r.model_version), RUN_TAG, run_id)
        except mlflow.exceptions.MlflowException as exc:  # a version deleted since it served: the run still holds it
            logger.warning("%s v%s: not tagged (%s)", r.model_name, r.model_version, exc.error_code)
    return run_id

