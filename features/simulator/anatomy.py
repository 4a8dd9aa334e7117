"""Spinal anatomy the simulator needs: normal vertebral heights, body volumes, regional curvature.

These are properties of the spine, not of a cohort, so they live here and not in a profile.
They are approximate values for older adults (assumptions, not taken from
clinical-evidence.md); they only have to put the raw measurements on a realistic scale,
because every feature the models use is a ratio or a difference of them.
"""

from __future__ import annotations

import numpy as np

from features.levels import LEVELS

#: Normal (uncompressed) mid-body height per level, mm, cranial to caudal, for a person
#: 160 cm tall. Assumption: thoracic ~16-22 mm rising to ~27 mm in the lower lumbar spine.
NORMAL_HEIGHT_MM = np.array(
    [15.5, 16.0, 16.5, 17.0, 17.5, 18.0, 18.5, 19.0, 19.5, 20.5, 21.5, 22.5,  # T1-T12
     24.0, 25.0, 26.0, 26.5, 26.0],  # L1-L5
    dtype=float,
)

#: Vertebral body volume per level, mL, for a person 160 cm tall. Assumption: CT volumes of
#: older adults; chosen so that 3 mL of cement fills ~12 % of L1 and the larger-side fill
#: ratio straddles the 13.82 % threshold of clinical-evidence.md §3.
BODY_VOLUME_ML = np.array(
    [7.0, 7.5, 8.0, 9.0, 10.0, 11.0, 12.5, 14.0, 15.5, 17.0, 19.5, 22.0,  # T1-T12
     25.0, 27.0, 29.0, 30.0, 30.0],  # L1-L5
    dtype=float,
)

#: Regional Cobb angle of the three-vertebra segment without any fracture, degrees
#: (positive = kyphosis). Assumption: thoracic kyphosis, neutral thoracolumbar junction,
#: lumbar lordosis.
REGIONAL_KYPHOSIS_DEG = np.array(
    [6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 5.0, 3.0, 3.0, 3.0,  # T1-T12
     2.0, 0.0, -4.0, -8.0, -10.0],  # L1-L5
    dtype=float,
)

#: Reference body height the tables above are given for, cm.
REFERENCE_BODY_HEIGHT_CM = 160.0

N_LEVELS = len(LEVELS)
assert NORMAL_HEIGHT_MM.shape == BODY_VOLUME_ML.shape == REGIONAL_KYPHOSIS_DEG.shape == (N_LEVELS,)
