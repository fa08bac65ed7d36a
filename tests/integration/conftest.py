"""The in-process hub fixture (see hubkit.py) on every store backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from hubkit import Hub, make_hub

from lumbung.store.protocol import Store


@pytest.fixture
def hub(store: Store, tmp_path: Path) -> Hub:
    return make_hub(store, tmp_path)
