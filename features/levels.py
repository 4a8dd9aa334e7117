"""Spinal levels: ordering, adjacency and the thoracolumbar-junction flag."""

from __future__ import annotations

import pandas as pd

#: Levels a vertebral augmentation can treat, cranial to caudal. T1-L5 covers every
#: published series (PVP T4-L5, PKP T6-L5; clinical-evidence §2). There is no L6/L7.
LEVELS: tuple[str, ...] = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))

#: Sacral levels. A sacral insufficiency fracture may appear in a follow-up export; it is
#: accepted there and left out of the vertebral outcomes (``features.validate``).
SACRAL_LEVELS: tuple[str, ...] = tuple(f"S{i}" for i in range(1, 6))

#: Ordinal position of each level, T1 = 1 ... L5 = 17. Adjacent levels differ by 1.
LEVEL_INDEX: dict[str, int] = {lvl: i + 1 for i, lvl in enumerate(LEVELS)}

#: Thoracolumbar junction as defined by Xiong 2021: T10-L2. (Zeng's review uses T11-L2;
#: we follow the cohort the simulator is calibrated on.)
THORACOLUMBAR_JUNCTION: frozenset[str] = frozenset({"T10", "T11", "T12", "L1", "L2"})
THORACOLUMBAR_DEFINITION = "T10-L2 (Xiong 2021)"


def level_index(levels: pd.Series) -> pd.Series:
    """Map level names ('T12', 'L1', ...) to their ordinal index (T1=1 ... L5=17)."""
    return levels.map(LEVEL_INDEX).astype("Int64")


def is_thoracolumbar(levels: pd.Series) -> pd.Series:
    """1 if the level lies in the thoracolumbar junction (T10-L2), else 0."""
    return levels.isin(THORACOLUMBAR_JUNCTION).astype("int8")
