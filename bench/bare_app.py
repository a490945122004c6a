"""The anchor of bench/api_throughput.py: a bare FastAPI route answering the same project
JSON from memory (no key, no database, no middleware), under the same uvicorn."""

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

PROJECT: dict[str, Any] = json.loads(Path(os.environ["BENCH_PROJECT_JSON"]).read_text())
app = FastAPI()


@app.get("/api/v1/projects/{project_id}")
async def get_project(project_id: str) -> dict[str, Any]:
    return PROJECT
