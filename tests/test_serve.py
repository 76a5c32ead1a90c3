"""`rl-router serve`: a warm-started tiny router answers the official `openai` client end to
end over HTTP on 127.0.0.1 (recorded pool), streams, and returns OpenAI-style errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from rl_router.task_sources import recipe_pool, recipe_tasks
from conftest import free_port


BIN = str(Path(sys.executable).with_name("rl-router"))


@pytest.fixture(scope="module")
def warm_router(gsm8k_run):
    """The quickstart's trained router (the session's run) and its held-out tasks."""
    from rl_router.recipe import recipe_from_dict

    r = recipe_from_dict(json.loads((gsm8k_run.out / "recipe.json").read_text()))
    _train, held = recipe_tasks(r, recipe_pool(r))
    return gsm8k_run.out, held


def wait_for_server(proc, client):
    """The server's model list once it accepts connections; fails only if the server exits
    (no wall-clock bound: pytest-timeout ends a hung test)."""
    while True:
        try:
            return client.models.list()
        except openai.APIConnectionError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)


def test_served_router_answers_openai_client(warm_router):
    run_dir, held = warm_router
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ROUTER_TOKEN": "tok-123"}
    proc = subprocess.Popen([BIN, "serve", str(run_dir), "--port", str(port), "--model-id", "tiny-router", "--api-key-env", "ROUTER_TOKEN"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="tok-123", max_retries=0, timeout=60)
        models = wait_for_server(proc, client)
        assert [m.id for m in models.data] == ["tiny-router"]

        q = held[0]
        resp = client.chat.completions.create(model="tiny-router", messages=[{"role": "user", "content": q.question}])
        extra = resp.model_extra["rl_router"]
        assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.content
        assert extra["routes"] and extra["routes"][0]["model"] in ("mixtral-8x7b", "gpt-4-1106")
        assert extra["cost"] == pytest.approx(sum(r["cost"] for r in extra["routes"])) and extra["cost"] > 0
        assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 100
        # the served answer is the adopted model's recorded final answer
        assert extra["trajectory"][-1].startswith("<think>") and "<answer>" in extra["trajectory"][-1]

        chunks = list(client.chat.completions.create(model="tiny-router", messages=[{"role": "user", "content": q.question}], stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == resp.choices[0].message.content
        assert chunks[-1].usage.total_tokens == resp.usage.total_tokens

        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": q.question}])
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny-router", messages=[])
        assert e.value.status_code == 400 and "messages" in str(e.value)
        with pytest.raises(openai.BadRequestError, match="recorded"):
            client.chat.completions.create(model="tiny-router", messages=[{"role": "user", "content": "What is the capital of France?"}])
        with pytest.raises(openai.BadRequestError, match="temperature"):
            client.chat.completions.create(model="tiny-router", messages=[{"role": "user", "content": q.question}], temperature=5)
        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert proc.poll() is None  # errors never take the server down
    finally:
        proc.terminate()
        proc.wait(timeout=30)
