"""Export: Hub-ready folder, model card metadata, reload reproduces the eval, push to a local
Hub stand-in (HF_ENDPOINT -> tests/hub_server.py on 127.0.0.1), secrets never exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer  # noqa: E402
from conftest import free_port  # noqa: E402


BIN = str(Path(sys.executable).with_name("rl-router"))
SECRET = "sk-planted-secret-0123456789abcdef"


def run(*args, env=None):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=e)


def test_export_reload_push_and_no_secrets(tmp_path, gsm8k_run):
    import shutil

    # the session's quickstart run: its router, recipe and eval
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("final", "eval"):
        shutil.copytree(gsm8k_run.out / name, run_dir / name)
    shutil.copy(gsm8k_run.out / "recipe.json", run_dir / "recipe.json")
    ev = gsm8k_run.eval

    env = {"HF_TOKEN": SECRET}
    p = run("export", str(run_dir), "--repo-id", "acme/tiny-router", env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = run_dir / "export" / "tiny-router"
    names = {f.name for f in out.iterdir() if not f.name.startswith(".")}  # the export manifest stays local
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "router_config.json", "eval.json", "README.md", "recipe.json"} <= names
    cfg = json.loads((out / "router_config.json").read_text())
    assert [m["name"] for m in cfg["pool"]["models"]] == ["mixtral-8x7b", "gpt-4-1106"] and cfg["pool"]["models"][1]["price_out"] == 30.0
    assert "<route" in cfg["prompt"]["system_prompt"] and cfg["tag_protocol"]["stop_strings"] == ["</route>", "</answer>"]
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("\n---", 1)[0][4:])
    assert meta["library_name"] == "rl-router" and "rl-router" in meta["tags"] and meta["datasets"] == ["gsm8k"]
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics[0]["value"] == round(ev["policies"]["router (greedy)"]["quality"], 4)
    assert "rl-router serve acme/tiny-router" in card and "| always-gpt-4-1106 |" in card
    router_row = next(line for line in card.splitlines() if line.startswith("| router (greedy) |"))
    assert f"| {ev['policies']['router (greedy)']['above_random_mixture'] + 1e-9:+.3f} |" in router_row and "above random line" in card

    # reload the exported folder: the same greedy numbers
    p = run("eval", str(out), "--no-sampled", "--n", "12", "--output-dir", str(tmp_path / "ev2"))
    assert p.returncode == 0, p.stderr[-2000:]
    ev2 = json.loads((tmp_path / "ev2" / "eval.json").read_text())
    a, b = ev["policies"]["router (greedy)"]["per_task"], ev2["policies"]["router (greedy)"]["per_task"]
    assert b["quality"] == a["quality"][:12] and b["cost"] == a["cost"][:12]  # the exported router answers the first tasks exactly as trained

    # push to a local Hub stand-in; the token travels only as the Authorization header
    with HubServer(tmp_path / "hub") as hub:
        p = run("export", str(run_dir), "--repo-id", "acme/tiny-router", "--push", "--private", env={**env, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert hub.repos["acme/tiny-router"]["visibility"] == "private"
        assert all(auth == f"Bearer {SECRET}" for m, path, auth in hub.requests if path.startswith("/api/models/"))
        assert hub.validated and hub.validated[0]["library_name"] == "rl-router"
        # every command in the card works as written, against this Hub
        _run_card_commands(card, hub.url, tmp_path)
    pushed = tmp_path / "hub" / "acme" / "tiny-router"
    assert {f.name for f in pushed.iterdir()} == names
    assert (pushed / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert SECRET not in p.stdout + p.stderr
    for f in list(out.rglob("*")) + list(pushed.rglob("*")):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_export_redacts_planted_secret_and_url_credentials(tmp_path, monkeypatch):
    from rl_router.recipe import recipe_from_dict
    from rl_router.serving.export import _scrub, redact_text, secret_values

    monkeypatch.setenv("POOL_KEY", SECRET)
    r = recipe_from_dict({"pool": {"type": "openai", "models": {"m": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "POOL_KEY", "price_in": 1, "price_out": 1}}}, "data": {"source": "synthetic"}})
    assert SECRET in secret_values(r)
    assert redact_text(f"key={SECRET} url=https://bob:hunter2@api.example.com/v1", [SECRET]) == "key=*** url=https://***@api.example.com/v1"
    (tmp_path / "log.txt").write_text(f"oops {SECRET}")
    _scrub(tmp_path, [SECRET])
    assert SECRET not in (tmp_path / "log.txt").read_text()
    (tmp_path / "w.bin").write_bytes(b"\xff\xfe" + SECRET.encode())
    import pytest

    from rl_router.errors import RouterError

    with pytest.raises(RouterError, match="secret"):
        _scrub(tmp_path, [SECRET])


def test_export_bad_repo_id_exits_2(tmp_path):
    from rl_router.tiny import build_tiny_router

    build_tiny_router(save_dir=tmp_path / "m", seed=0)
    p = run("export", str(tmp_path / "m"), "--repo-id", "no-slash", "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "ORG/NAME" in p.stdout


def test_export_never_deletes_what_it_did_not_write(tmp_path, gsm8k_run):
    """A user's folder is refused unless --overwrite, which keeps every file of another name;
    the run folder itself is refused; a re-export replaces exactly its own earlier files."""
    ck = str(gsm8k_run.out / "final")
    mine = tmp_path / "u"
    mine.mkdir()
    (mine / "important.txt").write_text("notes")
    p = run("export", ck, "--repo-id", "me/r", "--out", str(mine))
    assert p.returncode == 2 and "not empty" in p.stdout and "--overwrite" in p.stdout
    assert (mine / "important.txt").read_text() == "notes" and len(list(mine.iterdir())) == 1
    p = run("export", ck, "--repo-id", "me/r", "--out", str(mine), "--overwrite")
    assert p.returncode == 0, p.stdout[-2000:]
    assert (mine / "important.txt").read_text() == "notes" and (mine / "model.safetensors").exists()
    # again: an earlier export of ours is replaced, the user's file still kept
    (mine / "README.md").write_text("stale card")
    p = run("export", ck, "--repo-id", "me/r", "--out", str(mine))
    assert p.returncode == 0 and (mine / "important.txt").exists() and "stale card" not in (mine / "README.md").read_text()
    # the training run itself (or its final/) is never an export target
    for target in (gsm8k_run.out, gsm8k_run.out / "final"):
        before = sorted(p.name for p in gsm8k_run.out.rglob("*"))
        p = run("export", str(gsm8k_run.out), "--repo-id", "me/r", "--out", str(target))
        assert p.returncode == 2 and "choose a folder of its own" in p.stdout
        assert sorted(p.name for p in gsm8k_run.out.rglob("*")) == before


def test_eval_of_a_copied_export_writes_beside_it(tmp_path, gsm8k_run):
    """`rl-router eval EXPORT` from elsewhere writes next to EXPORT, not into the output_dir
    named by the recipe.json copied into it."""
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(gsm8k_run.out / "final", exp)
    shutil.copy(gsm8k_run.out / "recipe.json", exp / "recipe.json")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    p = subprocess.run([BIN, "eval", str(exp), "--no-sampled", "--n", "4"], cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (tmp_path / "exp-eval" / "eval.json").exists() and not (cwd / "outputs").exists() and not (exp / "eval").exists()


def _run_card_commands(card: str, hub_url: str, tmp_path: Path) -> None:
    """Run the model card's python and bash blocks verbatim (HF_ENDPOINT at the stand-in)."""
    import re
    import time

    env = {**os.environ, "HF_ENDPOINT": hub_url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"), "COLUMNS": "200"}
    blocks = re.findall(r"```(python|bash)\n(.*?)```", card, re.S)
    assert [k for k, _ in blocks] == ["python", "bash"]
    p = subprocess.run([sys.executable, "-c", blocks[0][1]], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.split() == ["mixtral-8x7b", "qwen2"], p.stdout + p.stderr[-2000:]
    cmd = blocks[1][1].strip()
    port = free_port()
    args = cmd.replace("--port 8080", f"--port {port}").split()
    assert args[:2] == ["rl-router", "serve"]
    proc = subprocess.Popen([BIN, *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        import httpx

        while True:  # until it answers or dies (no wall-clock bound: a slow machine is still a pass)
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read())
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny-router"
    finally:
        proc.terminate()
        proc.wait()
