"""Schemathesis hooks for tests/test_fuzz.py: every phase may revoke keys, stateful
chains included, but only keys the fuzzer made itself. Others belong to the rest of the
suite (and one to the fuzzer's own requests)."""

import uuid
from typing import Any

import schemathesis

MADE: set[str] = set()


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if case.operation.label == "POST /api/v1/keys" and response.status_code == 201:
        MADE.add(response.json()["id"])


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    key_id = (case.path_parameters or {}).get("key_id")
    if key_id is not None and key_id not in MADE:
        case.path_parameters["key_id"] = str(uuid.uuid4())  # an unknown key: 404
