import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fixtures import raw_tables  # noqa: E402


@pytest.fixture
def raw():
    """The hand-written raw export as text tables (fresh copy per test)."""
    return raw_tables()


@pytest.fixture
def raw_dir(tmp_path, raw):
    """The hand-written raw export written as CSV files in a folder."""
    folder = tmp_path / "raw"
    folder.mkdir()
    for name, df in raw.items():
        df.to_csv(folder / f"{name}.csv", index=False)
    return folder
