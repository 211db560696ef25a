"""The API's OpenAPI document is a contract (DESIGN §3, README): splitting `create_app` into
routers by resource must not change a path, a method, an operation id or a schema.

`data/openapi_fd81c23.json` was generated from `create_app` at commit fd81c23 (one closure,
before the split) with the same stand-in service as below; only `info.version` is ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

from logferry.service.api import create_app
from logferry.service.config import ServiceConfig

BEFORE = Path(__file__).parent / "data" / "openapi_fd81c23.json"


def _document() -> dict[str, Any]:
    """The document create_app builds; nothing is served, so a stand-in with a config will do."""
    service = MagicMock()
    service.config = ServiceConfig()
    # Through JSON, as /openapi.json sends it (tuples become lists, as in the fixture).
    return json.loads(json.dumps(create_app(service).openapi()))


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (path, method): op["operationId"]
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }


def test_paths_methods_and_operation_ids_are_unchanged() -> None:
    before = json.loads(BEFORE.read_text())
    assert _operations(_document()) == _operations(before)


def test_the_whole_document_is_unchanged_but_the_version() -> None:
    before = json.loads(BEFORE.read_text())
    after = _document()
    before["info"].pop("version")
    after["info"].pop("version")
    assert after["components"]["schemas"] == before["components"]["schemas"]
    assert after == before
