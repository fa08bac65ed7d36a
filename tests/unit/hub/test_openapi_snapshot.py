"""The hub's API as its OpenAPI document (``/v1/openapi.json``), pinned in tests/data/openapi.json.

Any change to a route, a request or a response shape changes the document and fails here with
the diff, so an API change is always deliberate: regenerate the snapshot on purpose (the failure
says how) and commit it with the change. Prose (descriptions and summaries, taken from
docstrings) is left out: rewording a docstring changes no shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from golden import check_golden, json_bytes

from lumbung.config import HubConfig
from lumbung.hub.app import create_app
from lumbung.hub.context import HubContext
from lumbung.store.blobs import MemoryBlobStore
from lumbung.store.memory import MemoryStore


def _openapi(tmp_path: Path) -> Any:
    ctx = HubContext(
        config=HubConfig(data_dir=tmp_path), store=MemoryStore(), blobs=MemoryBlobStore()
    )
    with TestClient(create_app(ctx, reaper=False)) as http:
        response = http.get("/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def _without_prose(value: Any) -> Any:
    # A property may be named "description": only string values are prose.
    if isinstance(value, dict):
        return {
            key: _without_prose(item)
            for key, item in value.items()
            if not (key in _PROSE and isinstance(item, str))
        }
    if isinstance(value, list):
        return [_without_prose(item) for item in value]
    return value


_PROSE = frozenset({"description", "summary"})


def test_the_openapi_document_is_the_stored_snapshot(tmp_path: Path) -> None:
    # Keys sorted, so the diff shows what changed rather than where FastAPI happened to put it.
    document = json.loads(json.dumps(_without_prose(_openapi(tmp_path)), sort_keys=True))
    check_golden("openapi.json", json_bytes(document))


def test_responses_admit_new_fields_and_requests_refuse_them(tmp_path: Path) -> None:
    schemas = _openapi(tmp_path)["components"]["schemas"]
    assert "additionalProperties" not in schemas["NodeView"]
    assert "additionalProperties" not in schemas["Assignment"]
    assert schemas["NodeRegister"]["additionalProperties"] is False
    assert schemas["HeartbeatRequest"]["additionalProperties"] is False
