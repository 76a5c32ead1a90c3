"""The Python blocks of README and the guide (docs/guide.md) run as written (a renamed import or
a changed signature fails here). The plain-TRL block, which loads SmolLM2 and trains, runs in
tests/test_tools_protocol.py with the tiny router in its place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = [b for doc in ("README.md", "docs/guide.md") for b in re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)]
RUN = [b for b in BLOCKS if "GRPOTrainer(" not in b]


def test_readme_has_python_blocks():
    assert len(RUN) >= 1 and len(BLOCKS) == len(RUN) + 1


@pytest.mark.parametrize("i", range(len(RUN)))
def test_readme_python_block_runs_as_written(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(RUN[i], f"README / guide block {i + 1}", "exec"), {"__name__": "readme"})
