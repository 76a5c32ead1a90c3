"""Every row of docs/reliability.md's bad-input table (scripts/bad_inputs.py): exit code 2, one
line naming the field or file and the fix, never a Python traceback."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "scripts" / "bad_inputs.py")
bad = importlib.util.module_from_spec(spec)
sys.modules["bad_inputs"] = bad  # dataclasses look their module up there
spec.loader.exec_module(bad)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield d, bad.make_model(d / "run"), holder.getsockname()[1]
    holder.close()


@pytest.mark.parametrize("case", bad.CASES, ids=[c.id for c in bad.CASES])
def test_bad_input_is_one_line_and_exit_2(case, world, monkeypatch):
    d, model, busy = world
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = bad.run_case(case, d / "cases", model, busy)
    assert code == 2, out
    assert "Traceback" not in out and case.expect.replace("{dir}", "{dir}") in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error")]
    assert len(errors) == 1, out  # one line
    assert "hunter2" not in out  # a password in any input is never printed


def test_the_documented_table_has_every_case():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    for case in bad.CASES:
        assert f"({case.id})" in doc, case.id
