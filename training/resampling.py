"""The patient-level (cluster) bootstrap behind every 95 % interval the product reports.

A patient can have several treated levels (procedures), and their outcomes are not
independent: one death ends every level's follow-up, one remote-fracture process serves
all of a patient's levels, adjacent fractures are shared within a session, and the
censoring is the patient's. Resampling procedures as if they were independent makes the
intervals too narrow (on a 4,000-procedure PKP cohort with 2,793 patients, standard errors
1.38x too small for death, 1.18x for remote, 1.06x for adjacent fractures; coverage in
``bench/bench_coverage.py``). So each replicate draws *patients* with replacement, as many
as there are, and takes all of each drawn patient's procedures (the cluster bootstrap,
Davison & Hinkley 1997, section 3.8; Field & Welsh 2007, J R Stat Soc B 69:369).

The bootstraps are vectorised: a replicate is a row of counts, one per procedure, that
multiplies each procedure's weight in every metric. Here a patient's count (how many
times it was drawn) is broadcast to all of its procedures. When every patient has one
procedure, the counts are exactly those of resampling procedures with the same seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def patient_codes(patients, n_rows: int) -> np.ndarray:
    """Patient index (0..P-1, in order of first appearance) of each of ``n_rows`` rows.

    ``patients``: one patient id per row (any hashable values; missing ids are refused), or
    None when every row is its own patient (rows known to be independent).
    """
    if patients is None:
        return np.arange(n_rows)
    ids = np.asarray(patients)
    if ids.shape != (n_rows,):
        raise ValueError(f"patients must hold one id per row: {ids.shape} for {n_rows} rows")
    codes, _ = pd.factorize(ids, use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError(f"patients: {int((codes < 0).sum())} rows without a patient id")
    return codes


def patient_counts(rng: np.random.Generator, codes: np.ndarray, size: int, dtype: str = "float64") -> np.ndarray:
    """(size, n_rows) counts (of ``dtype``) of ``size`` cluster-bootstrap replicates: in each, P
    patients drawn with replacement out of the P in ``codes`` (``patient_codes``), each
    row counted as often as its patient was drawn.

    Drawn as integers and counted (several times faster than ``rng.multinomial``); with
    one row per patient (``codes`` = 0..n-1) these are the counts of resampling rows.
    """
    n_patients = int(codes.max()) + 1 if len(codes) else 0
    if n_patients == 0:
        return np.zeros((size, 0), dtype)
    draws = rng.integers(0, n_patients, size=(size, n_patients)) + n_patients * np.arange(size)[:, None]
    counts = np.bincount(draws.ravel(), minlength=size * n_patients).reshape(size, n_patients)
    return counts.astype(dtype)[:, codes]

