"""A fitted XGBoost booster's raw log-odds, summed in blocks of trees, at a low cost per call.

``BlockMargins(booster, trees_per_block)(data)`` returns, per row, the sum of the tree
margins of every block of ``trees_per_block`` trees, each block summed by XGBoost in
float32 (as ``Booster.inplace_predict(..., iteration_range=block, predict_type="margin")``
does) and the blocks added in float64. It is what ``BoostScorer.raw_logit`` needs, and
gives **bit for bit** the same numbers as ``inplace_predict`` with a zero base margin
(tested), for much less of the caller's time on small inputs:

- ``inplace_predict``'s Python wrapper costs ~150 µs per call whatever the rows (it
  builds a proxy matrix for ``base_margin``, inspects the input type against a dozen data
  libraries, builds a class per call, and copies the output). A service scoring a
  micro-batch of a few records calls it once per block per model: 8 blocks x 4 models
  = 32 calls, ~5 ms per batch, all of it holding the GIL that the event loop needs.
- Here the same C API function that wrapper ends in (``XGBoosterPredictFromDense``, the
  documented in-place prediction of XGBoost's C API) is called with its configuration
  prepared once per block, on a booster copy whose base score is 0.5 (a margin of
  exactly 0, so no proxy matrix is needed), and each block's float32 output is added
  straight into the float64 total. XGBoost's own work is unchanged and runs without the
  GIL, as ctypes releases it.

If the installed XGBoost has no such function, or the zero-base copy does not reproduce
the zero-base-margin sums on probe rows, the public ``inplace_predict`` is used instead:
the numbers are the same, only slower.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import xgboost as xgb

#: A logistic model's base score (a probability) whose margin is exactly 0.
_ZERO_MARGIN_BASE_SCORE = "0.5"


def _c_api():
    """XGBoost's loaded C library and its error check, or None when not available."""
    try:
        from xgboost.core import _LIB, _check_call
    except ImportError:  # pragma: no cover - depends on the installed XGBoost
        return None
    if not hasattr(_LIB, "XGBoosterPredictFromDense"):  # pragma: no cover
        return None
    return _LIB, _check_call


class BlockMargins:
    """Block sums of a booster's tree margins (see the module docstring).

    ``booster``: a fitted ``xgboost.Booster`` (binary:logistic); ``trees_per_block``:
    trees per float32 block. Calling it with a C-contiguous float32 array (rows x
    features, NaN = missing) returns the float64 sum of the block margins, without the
    base margin.
    """

    def __init__(self, booster: xgb.Booster, trees_per_block: int) -> None:
        self.booster = booster
        self.trees_per_block = trees_per_block
        self.trees = booster.num_boosted_rounds()
        self.blocks = [(first, min(first + trees_per_block, self.trees))
                       for first in range(0, self.trees, trees_per_block)]
        self._zero_base = booster.copy()
        self._zero_base.set_param({"base_score": _ZERO_MARGIN_BASE_SCORE})
        self._configs = [json.dumps({"type": 1, "training": False, "iteration_begin": first, "iteration_end": last,
                                     "missing": float("nan"), "strict_shape": False, "cache_id": 0}).encode()
                         for first, last in self.blocks]
        self._c = _c_api()
        if self._c is not None:
            probe = np.full((2, booster.num_features()), np.nan, dtype="float32")
            probe[1] = 0.0
            if not np.array_equal(self._direct(probe), self.reference(probe)):  # pragma: no cover
                self._c = None

    def set_threads(self, n_threads: int) -> None:
        """Threads XGBoost computes the margins with."""
        self._zero_base.set_param({"nthread": n_threads})

    def __reduce__(self):
        # Rebuilt from the booster when copied or pickled (the C library handle is not).
        return (type(self), (self.booster, self.trees_per_block))

    def __call__(self, data: np.ndarray) -> np.ndarray:
        if len(data) == 0:
            return np.zeros(0, dtype="float64")
        if self._c is None:  # pragma: no cover - only without XGBoost's C API
            return self.reference(data)
        return self._direct(data)

    def reference(self, data: np.ndarray) -> np.ndarray:
        """The same sums through the public ``inplace_predict`` (with a zero base margin)."""
        out = np.zeros(len(data), dtype="float64")
        no_base = np.zeros(len(data), dtype="float32")
        for first, last in self.blocks:
            out += self.booster.inplace_predict(data, iteration_range=(first, last), predict_type="margin",
                                                missing=np.nan, base_margin=no_base)
        return out

    def _direct(self, data: np.ndarray) -> np.ndarray:
        lib, check = self._c
        data = np.ascontiguousarray(data, dtype="float32")
        rows = len(data)
        interface = json.dumps({"data": (data.ctypes.data, True), "shape": list(data.shape), "strides": None,
                                "typestr": "<f4", "version": 3}).encode()
        out = np.zeros(rows, dtype="float64")
        shape = ctypes.POINTER(ctypes.c_uint64)()
        dims = ctypes.c_uint64()
        preds = ctypes.POINTER(ctypes.c_float)()
        handle, no_proxy = self._zero_base.handle, ctypes.c_void_p()
        for config in self._configs:
            check(lib.XGBoosterPredictFromDense(handle, interface, config, no_proxy, ctypes.byref(shape),
                                                ctypes.byref(dims), ctypes.byref(preds)))
            if dims.value != 1 or shape[0] != rows:  # pragma: no cover - XGBoost changed its output
                raise RuntimeError(f"XGBoost returned margins of shape {[shape[i] for i in range(dims.value)]} "
                                   f"for {rows} rows")
            # A view of XGBoost's per-thread buffer, valid until the next call: added at once.
            out += np.ctypeslib.as_array(preds, shape=(rows,))
        return out
