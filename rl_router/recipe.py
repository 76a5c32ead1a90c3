"""Recipes: one YAML file with sections `model`, `pool`, `env`, `rollout`, `rewards`, `trainer`, `data`.

`trainer` maps 1:1 onto TRL's `GRPOConfig` fields (validated against the dataclass, so a
typo fails before any model loads); the other sections are ours. The dataclass defaults are
the two-model GSM8K recipe, what a command uses when no recipe is given (the embedded
defaults); `recipes/gsm8k.yaml` spells the same values out (a test keeps them equal). The
quickstart is its own recipe (MMLU-Pro, ten models: `recipes/quickstart.yaml`, shipped in the
package as `rl_router/assets/quickstart.yaml`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


from rl_router.envs import ENV_CONFIGS
from rl_router.errors import ConfigError, check_fields, check_keys
from rl_router.tasks import Task


@dataclass
class ModelSection:
    name_or_path: str = "tiny"  # a Hub id, a local path, or "tiny" (built offline)
    hidden_size: int = 64  # tiny only
    num_layers: int = 2  # tiny only
    seed: int = 0
    dtype: str | None = None
    lora: dict[str, Any] | None = None  # peft LoraConfig fields; null = full fine-tuning
    autocast: str | None = None  # "bfloat16": rollouts, evals, warm start and RL loss under bf16 autocast (fp32 master weights) where bf16 is native (GPU; CPU with AVX512-BF16/AMX); null = float32


@dataclass
class RolloutSection:
    max_new_tokens: int = 96  # per policy turn
    max_completion_tokens: int = 1024  # per episode, policy + inserted tokens
    temperature: float = 1.0  # `rl-router rollout --sampled` samples at it (training samples at trainer.temperature; eval's sampled row too)
    top_p: float = 1.0
    protocol: str = "tags"  # how the router acts: "tags" (<route model=...>) or "tools" (native tool calls through the chat template)
    batch_size: int = 32  # episodes per lock-step batch in evaluation, boundaries and `rl-router rollout` (larger: faster while memory lasts)
    share_prompts: bool = False  # rollouts prefill a group's shared prompt once and hold its KV once for the group's samples (rollout/shared_kv.py; the same episodes up to float rounding; on for the SmolLM2 recipes, where a prompt is most of an episode's tokens)
    decisions: str = "names"  # how training samples a route: "names" (from the name distribution evaluation decides by: pool names only, @NAME held to called models) or "free" (token by token over the vocabulary)


@dataclass
class DataSection:
    source: str = "pool"  # "pool": the recorded pool's tasks; "synthetic": generated; "hf": `hf` datasets; "arithmetic" / "code": agent worlds (env.name: agentic); or a JSONL path
    datasets: list[str] = field(default_factory=lambda: ["gsm8k"])  # filter for source=pool
    heldout_fraction: float = 0.2
    heldout_by: str = "task"  # "task": held-out tasks drawn at random; "topic": whole topics (MMLU subjects) held out, never trained on; "files": the tasks of pool.files / pool.hf_dataset are the held-out set (by task when the pool has none)
    validation_fraction: float = 0.0  # share of the train split set aside (never trained on) for `rl-router calibrate`
    max_train: int | None = None  # cap on train tasks (null: all)
    max_heldout: int | None = None  # cap on held-out tasks (null: all)
    max_heldout_initial: int | None = None  # cap on the held-out tasks the untrained router is evaluated on (the first N; it runs every turn to the token limit, the slowest evaluation; its figures carry their own n); null: all
    seed: int = 0
    synthetic_n: int = 200
    synthetic_template: str = "Synthetic {topic} task #{i}"  # source=synthetic: the question text ({topic}, {i}); leave {topic} out for tasks a router cannot tell apart
    synthetic_topics: list[str] = field(default_factory=lambda: ["easy", "hard"])
    hf: list[dict[str, Any]] = field(default_factory=list)  # source=hf: [{path, name, split, question, answer, answer_type, data_files}]
    world: dict[str, Any] = field(default_factory=dict)  # source=arithmetic|code: task generator options (min_steps, max_steps, p_hard, timeout_s)


@dataclass
class AlgorithmSection:
    """Our own training switches; TRL's fields live in `trainer` (GRPOConfig) and `sft` (SFTConfig)."""

    name: str = "grpo"  # grpo | rloo | bopo
    sft_warmstart: bool = True  # boundary-guided SFT before RL
    sft_examples: int = 1024  # stratified boundary trajectories to synthesize
    sft_style: str = "compact"  # boundary trajectories: "compact" (short sub-query, answer @model) or "verbatim" (question, typed answer)
    neither_rate: float = 0.1  # share of "neither" tasks (cheap trajectory) in the SFT mix
    strong_only_share: float | None = 0.5  # share of strong_only tasks (escalations) in the SFT mix; null = equal to each other class
    sft_mix: str = "stepwise"  # "efficient": BoPO's stratified cost-efficient successes; "stepwise": strong_only tasks as the boundary-guided hybrid (agentic: per step; router_r1: cheap-then-strong cascade); "both": both boundaries of every task (no routing preference); "agreement": the agreement cascade (N models); "per_topic": each topic's most accurate train model; "format": the protocol only (random calls and adoptions: no routing rule)
    cascade_models: list[str] | None = None  # sft_mix agreement: [cheap_a, cheap_b, strong]; null = fitted on the train tasks
    bopo_lam: float = 0.5  # BoPO: success bonus for cost below the strong boundary
    bopo_mu: float = 0.25  # BoPO: failure penalty per unit of boundary-relative cost
    bopo_beta: float = 0.5  # BoPO: weight of the boundary reference in the baseline
    cheap_model: str | None = None  # boundary policies; default: the pool's cheapest / strongest card
    strong_model: str | None = None
    advantage: str | None = None  # the advantage estimator, if not algorithm.name's own: grpo | rloo | bopo | all_names (bopo needs name: bopo; name: bopo with advantage: grpo trains GRPO on BoPO's reward, the ablation); all_names: each group takes every pool model once at its first route decision, weighted by the router's probability of it: the decision's exact expected-reward gradient (training/advantages.py; num_generations a multiple of the pool's size; one call of every model per training task)
    all_names_weights: str = "policy"  # all_names only: policy (each episode by the router's probability of its model: the exact gradient) | uniform (every episode alike, A = r - mean(r): the natural gradient's direction for a softmax over names, no plateau in the tabular case) | mirror (toward the target pi * exp(r / all_names_temperature): mirror descent's step, a proper fit of whole names whatever their tokens; training/advantages.py)
    all_names_credit: str = "episode"  # all_names only: episode (every token of an episode takes its name's advantage) | name (the tokens up to the end of the first route name take it, the tokens after it the episode's own GRPO advantage: the protocol is trained by its outcome, not by the name's target; training/advantages.py)
    all_names_episodes: str = "sampled"  # all_names only: sampled (the router writes each episode after its forced name) | scripted (each episode is the warm start's protocol to its name, cut after the name: the loss trains the route decision only, at about a prompt's forward and backward per task; for routers that route once; rollout/decision_episodes.py)
    prompt_gradient: bool = True  # false: the RL loss runs each prompt but its last token without gradient, so the weights learn only through the completion's own tokens and the prompt's last (which predicts the first completion token) (a truncated gradient: what the router reads of the prompt is trained, how it encodes the prompt is not); a forward of the prompt instead of a forward and backward, for routers whose completions are a few tokens after a long prompt (training/logprobs.py)
    protocol_anchor: float = 0.0  # scripted all-names episodes only: weight of the mean negative log-likelihood of the script's protocol tokens of one episode per group, which is kept whole (the warm start's own `<think>Route.</think><route model="NAME">sub-query</route>`, before and after the name, and the adoption after the pool's reply, the reply itself not anchored), added to the loss so that the shared weights the names' gradient moves keep the protocol the router must write itself at evaluation (measured without it: at 5x the learning rate every greedy held-out episode was a format error); 0: off (training/anchor.py)
    all_names_weights_in_loss: bool = False  # scripted mirror groups only: each group's names' log-probs, which weigh the mirror target, are read from the loss's own forward (detached) instead of a separate no-grad pass before it: the same objective with one forward a step fewer (a step whose loss pieces split a group runs the separate pass; training/names_in_loss.py)
    all_names_temperature: float = 0.1  # all_names_weights: mirror only: eta in reward units; a name's odds in the target are multiplied by e per eta of reward lead
    decision_entropy_floor: float = 0.0  # nats: below it, a name decision's entropy (within its allowed set) is pushed back up (training/exploration.py); 0: off
    decision_entropy_coef: float = 0.1  # weight of the floor's hinge in the loss (a mean over name decisions; the policy term weighs each trained token by 1 / the generation's trained tokens)
    trim_padding: bool = False  # the loss runs each micro-batch at its own width (training/microbatch.py): the same log-probs up to float rounding on rotary-position routers, fewer columns
    microbatch_tokens: int | None = None  # the loss runs each TRL micro-batch in pieces of at most this many tokens (distinct prompts once, completions per row), each backwarded before the next: memory bounded by tokens, not rows, and the same gradient (training/microbatch.py); with a large trainer.per_device_train_batch_size, short episodes share a forward and long ones split; null: TRL's micro-batches as they are
    rl_minutes: float | None = None  # stop RL after this many minutes (at the next step; `train --minutes`); null: trainer.max_steps decides


@dataclass
class CurveSection:
    """The RL stage watched on tasks it never trains on (training/curve.py): a held-out learning
    curve, and the checkpoint kept by validation reward."""

    every_steps: int = 0  # evaluate the router greedily every N RL steps (and at step 0, the warm start); 0: no curve
    heldout_n: int = 200  # the first N held-out tasks: the curve drawn and kept in metrics.json (reported, never used to choose)
    validation_n: int = 200  # the first N validation tasks (data.validation_fraction): their reward picks the kept checkpoint
    keep_best: bool = False  # ship the point of highest validation reward instead of the last step


def _default_trainer() -> dict[str, Any]:
    return {
        "max_steps": 16,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "learning_rate": 2.0e-5,
        "beta": 0.0,
        "temperature": 0.7,  # the warm-started tiny router derails on its tail at T=1 (77% format errors vs 20% at 0.7)
        "logging_steps": 1,
        "save_steps": 8,
        "report_to": "none",
        "seed": 0,
        "max_completion_length": 512,
        "gradient_checkpointing": False,  # TRL turns it on by default; a tiny model does not need it
        # TRL's default ("group") divides each group's advantages by its own std: a $0.0005 cost
        # spread among right answers then pushes as hard as right against wrong, and alpha is not
        # the trade-off trained. "batch" keeps every reward difference in proportion (RLOO and
        # BoPO compute their own advantages and ignore it; tests/test_trainer.py checks both)
        "scale_rewards": "batch",
    }


def _default_sft() -> dict[str, Any]:
    return {
        "max_steps": 300,
        "per_device_train_batch_size": 8,
        "learning_rate": 1.0e-2,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 10,
        "logging_steps": 25,
        "save_strategy": "steps",  # checkpoints in OUT/sft_run: an interrupted warm start resumes
        "save_steps": 100,
        "save_total_limit": 1,
        "report_to": "none",
        "seed": 0,
        "gradient_checkpointing": False,
    }


def _default_pool() -> dict[str, Any]:
    return {"type": "recorded", "datasets": ["gsm8k"]}


def _default_env() -> dict[str, Any]:
    return {"name": "router_r1", "max_turns": 3, "budget": 0.01, "max_obs_tokens": 128}


def _default_rewards() -> list[dict[str, Any]]:
    return [{"name": "router_r1", "alpha": 0.3, "cost_mode": "linear", "cost_scale": 0.004}]


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    pool: dict[str, Any] = field(default_factory=_default_pool)
    env: dict[str, Any] = field(default_factory=_default_env)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    rewards: list[dict[str, Any]] = field(default_factory=_default_rewards)
    trainer: dict[str, Any] = field(default_factory=_default_trainer)  # GRPOConfig fields, 1:1
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    sft: dict[str, Any] = field(default_factory=_default_sft)  # SFTConfig fields, 1:1
    data: DataSection = field(default_factory=DataSection)
    curve: CurveSection = field(default_factory=CurveSection)
    output_dir: str = "outputs/gsm8k"

    # ---- building ---------------------------------------------------------------------------
    def env_config(self) -> Any:
        """The `env:` section as the named environment's config dataclass."""
        kw = {k: v for k, v in self.env.items() if k != "name"}
        return ENV_CONFIGS[self.env.get("name", "router_r1")](**kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: data.source values that are agent worlds (env.name: agentic)
WORLD_SOURCES = ("arithmetic", "code")
WORLD_KEYS = {"min_steps", "max_steps", "p_hard", "timeout_s"}
HF_SPEC_KEYS = {"path", "name", "split", "data_files", "question", "answer", "answer_type", "dataset", "limit"}


# ---- loading and validation ---------------------------------------------------------------
SECTIONS = {"model", "pool", "env", "rollout", "rewards", "trainer", "algorithm", "sft", "data", "curve", "output_dir"}


def _section(cls: type, raw: Any, path: str) -> Any:
    """One of our sections as its dataclass, every field type-checked."""
    if raw is None:
        return cls()
    return dataclasses.replace(cls(), **check_fields(cls, raw, path))


#: TRL config fields that must be positive (a negative batch size is accepted by TRL's
#: dataclasses and fails minutes later, deep inside training)
POSITIVE_TRL_FIELDS = (
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "num_generations", "steps_per_generation",
    "max_completion_length", "max_length", "logging_steps", "save_steps", "learning_rate", "temperature", "num_iterations",
)


def validate_trainer(trainer: dict[str, Any], path: str = "trainer", config_cls: Any = None) -> None:
    """Every key must be a field of TRL's GRPOConfig (`trainer`) or SFTConfig (`sft`), every
    value of that field's type (checked against the dataclass's annotations), counts and
    rates positive, `max_steps` > 0. YAML 1.1 reads `1e-5` (no dot) as a string; where the
    field is a float we convert such strings, as TRL's own argument parser would."""
    if not isinstance(trainer, dict):
        raise ConfigError(path, f"expected a mapping of {'GRPOConfig' if path == 'trainer' else 'SFTConfig'} fields, got {type(trainer).__name__} {trainer!r}")
    if not trainer:
        return
    if config_cls is None:
        from trl import GRPOConfig as config_cls

    if "output_dir" in trainer:
        raise ConfigError(f"{path}.output_dir", "is set by rl-router", "use the top-level output_dir or --output-dir")
    checked = check_fields(config_cls, trainer, path, positive=POSITIVE_TRL_FIELDS)
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    for k, v in checked.items():  # null where TRL's default is a value: our code and TRL's would read None as a number
        if v is None and defaults.get(k) is not None:
            shown = "" if defaults[k] is dataclasses.MISSING else f" ({defaults[k]!r})"
            raise ConfigError(f"{path}.{k}", "is null", f"leave it out for TRL's default{shown}, or give a value")
    if "max_steps" in checked and checked["max_steps"] <= 0:
        raise ConfigError(f"{path}.max_steps", f"must be > 0, got {checked['max_steps']}", "rl-router trains for a number of steps")
    trainer.update(checked)


MAPPING_SECTIONS = ("model", "pool", "env", "rollout", "trainer", "algorithm", "sft", "data", "curve")


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    if not isinstance(raw, dict):
        raise ConfigError("recipe", f"expected a mapping at the top level, got {type(raw).__name__}")
    check_keys(raw, SECTIONS, "recipe")
    for sec in MAPPING_SECTIONS:
        if raw.get(sec) is not None and not isinstance(raw[sec], dict):
            raise ConfigError(sec, f"expected a mapping (a section of fields), got {type(raw[sec]).__name__} {raw[sec]!r}", f"write it as {sec}: {{field: value, ...}}, or set one field with --set {sec}.FIELD=VALUE")
    if "output_dir" in raw and not isinstance(raw["output_dir"], str):
        raise ConfigError("output_dir", f"expected a folder path, got {raw['output_dir']!r}")
    if "output_dir" in raw and not raw["output_dir"].strip():
        raise ConfigError("output_dir", "is empty (it would write into the current folder)", "give a folder, e.g. outputs/my-run")
    from rl_router.parsing import check_depth, find_nonfinite
    from rl_router.redact import find_url_credentials

    check_depth(raw, "recipe")
    bad = find_nonfinite(raw, "recipe")
    if bad:
        raise ConfigError(bad[0].removeprefix("recipe."), f"expected a finite number, got {bad[1]!r}", "give a number (YAML's .nan and .inf mean nothing here)")
    creds = find_url_credentials(raw, "recipe")
    if creds:
        raise ConfigError(creds.removeprefix("recipe."), "holds credentials in a URL (user:password@ or a token before @); they would be written to OUT/recipe.json", "remove them from the URL: put the key in an environment variable and name it with api_key_env")
    raw_env = raw.get("env") or {}
    env_name = raw_env.get("name", "router_r1")
    if not isinstance(env_name, str):
        raise ConfigError("env.name", f"expected text, got {env_name!r}", f"use one of {sorted(ENV_CONFIGS)}")
    if env_name not in ENV_CONFIGS:
        raise ConfigError("env.name", f"unknown environment {env_name!r}", f"use one of {sorted(ENV_CONFIGS)}")
    env = {**(_default_env() if env_name == "router_r1" else {"name": env_name}), **raw_env}
    env = {"name": env_name, **check_fields(ENV_CONFIGS[env_name], {k: v for k, v in env.items() if k != "name"}, "env")}
    pool = raw.get("pool") or _default_pool()
    if isinstance(pool, dict) and "type" not in pool:  # e.g. --set pool.datasets=[mmlu] on the default pool
        pool = {**_default_pool(), **pool}
    rewards = raw.get("rewards") if raw.get("rewards") is not None else _default_rewards()
    if not isinstance(rewards, list):
        raise ConfigError("rewards", "must be a list of {name: ..., weight: ...}")
    trainer = {**_default_trainer(), **(raw.get("trainer") or {})}
    validate_trainer(trainer)
    from trl import SFTConfig

    sft = {**_default_sft(), **(raw.get("sft") or {})}
    validate_trainer(sft, "sft", SFTConfig)
    r = Recipe(
        model=_section(ModelSection, raw.get("model"), "model"),
        pool=pool,
        env=env,
        rollout=_section(RolloutSection, raw.get("rollout"), "rollout"),
        rewards=rewards,
        trainer=trainer,
        algorithm=_section(AlgorithmSection, raw.get("algorithm"), "algorithm"),
        sft=sft,
        data=_section(DataSection, raw.get("data"), "data"),
        curve=_section(CurveSection, raw.get("curve"), "curve"),
        output_dir=str(raw.get("output_dir", "outputs/gsm8k")),
    )
    r.env_config()  # validates env fields
    validate_combination(r)
    validate_trl_configs(r)
    from rl_router.rewards import build_rewards

    if not r.rewards:  # an empty list used to pass here and fail after the baselines ran
        raise ConfigError("rewards", "is empty", "list at least one reward, e.g. rewards: [{name: router_r1, alpha: 0.3}]")
    build_rewards(r.rewards)  # validates reward specs
    return r


def world_size(env: Mapping[str, str] | None = None) -> int:
    """Processes this run is launched with (torchrun / accelerate set WORLD_SIZE; `env`
    defaults to os.environ), before any process group exists: recipes are validated before
    anything starts."""
    raw = (os.environ if env is None else env).get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        raise ConfigError("WORLD_SIZE", f"{raw!r} is not a number of processes", "unset it (one process), or launch with torchrun / accelerate, which set it") from None
    if n < 1:
        raise ConfigError("WORLD_SIZE", f"{raw!r} is not a number of processes", "unset it (one process), or launch with torchrun / accelerate, which set it")
    return n


#: how TRL 1.16 normalises a micro-batch's loss, per `trainer.loss_type`: by the generation's
#: token count (fixed), by the micro-batch's rows, or by its own loss tokens; what
#: `algorithm.microbatch_tokens` needs to weigh its pieces (training/microbatch.py)
LOSS_NORMALISERS = {"dapo": "fixed", "cispo": "fixed", "vespo": "fixed", "grpo": "rows", "sapo": "rows", "dr_grpo": "rows", "luspo": "rows", "bnpo": "tokens"}
LOSS_TYPES = tuple(LOSS_NORMALISERS)

#: fields of our own sections with a range: (section, field, minimum, maximum, allow_none)
RANGES = (
    ("model", "hidden_size", 1, None, False), ("model", "num_layers", 1, None, False),
    ("rollout", "max_new_tokens", 1, None, False), ("rollout", "max_completion_tokens", 1, None, False), ("rollout", "batch_size", 1, None, False),
    ("rollout", "temperature", 0.0, None, False), ("rollout", "top_p", 1e-9, 1.0, False),
    ("data", "max_train", 1, None, True), ("data", "max_heldout", 1, None, True), ("data", "max_heldout_initial", 1, None, True), ("data", "synthetic_n", 1, None, False),
    ("algorithm", "sft_examples", 1, None, False), ("algorithm", "neither_rate", 0.0, 1.0, False),
    ("algorithm", "bopo_lam", 0.0, 0.999999, False), ("algorithm", "bopo_mu", 0.0, 0.499999, False), ("algorithm", "bopo_beta", 0.0, 1.0, False),
    ("algorithm", "rl_minutes", 1e-9, None, True), ("algorithm", "decision_entropy_floor", 0.0, None, False), ("algorithm", "decision_entropy_coef", 0.0, None, False),
    ("curve", "every_steps", 0, None, False), ("curve", "heldout_n", 0, None, False), ("curve", "validation_n", 0, None, False),
)


def check_ranges(r: Recipe) -> None:
    """Numbers of our sections inside the range that means something (a 0 or negative count, a
    share above 1), so nothing fails, or silently means something else, at first use."""
    for sec, name, lo, hi, allow_none in RANGES:
        v = getattr(getattr(r, sec), name)
        if v is None and allow_none:
            continue
        fix = "null (all) or a positive number" if allow_none else "a value in range"
        if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}]"
            raise ConfigError(f"{sec}.{name}", f"must be {rng}, got {v!r}", f"use {fix}")


def validate_trl_configs(r: Recipe) -> None:
    """Build TRL's GRPOConfig and SFTConfig from the recipe now, as training will, so that what
    TRL itself refuses (an unknown lr_scheduler_type, a batch num_generations does not divide)
    stops the run before the baselines and the warm start, not 50 minutes in.

    Building a TrainingArguments sets up accelerate's process-wide state (a Borg shared by every
    later Accelerator): it is built here as one CPU process, with the launcher's variables hidden
    and the per-device batch scaled to the global one (TRL's divisibility rules depend only on
    that), and the shared state is reset afterwards, so training still sets up its own devices
    and process group."""
    import tempfile

    from accelerate.state import AcceleratorState, PartialState
    from trl import GRPOConfig, SFTConfig

    for section, values in (("trainer", r.trainer), ("sft", r.sft)):
        check_report_to(values.get("report_to"), f"{section}.report_to")
    had_state = bool(PartialState._shared_state)
    launcher = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    hw = {"bf16": False, "use_cpu": True}
    try:
        for section, cls, values in (("trainer", GRPOConfig, r.trainer), ("sft", SFTConfig, r.sft)):
            kw = {**hw, **values, **({"bf16": False} if values.get("bf16") else {})}
            if section == "trainer":
                kw["per_device_train_batch_size"] = int(values.get("per_device_train_batch_size", 8)) * world_size(launcher)
            try:
                with tempfile.TemporaryDirectory() as d:
                    cls(output_dir=d, **kw)
            except (ValueError, TypeError) as e:
                msg = " ".join(str(e).split())
                field_ = next((k for k in values if k in msg or str(values[k]) in msg.split(" ")[0]), None)
                raise ConfigError(f"{section}.{field_}" if field_ else section, f"TRL refuses it: {msg[:300]}", f"fix the {'GRPOConfig' if section == 'trainer' else 'SFTConfig'} field") from None
    finally:
        os.environ.update(launcher)
        if not had_state:
            AcceleratorState._reset_state(reset_partial_state=True)


def check_report_to(value: Any, path: str) -> None:
    """Every logger `report_to` names is one transformers knows and one installed here: an
    unknown or missing one used to fail only when the trainer started, after the baselines."""
    if value is None:
        return
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(path, f"expected a logger name or a list of them, got {value!r}", "e.g. tensorboard, or none")
    for n in names:
        if n in ("none", "all"):
            continue
        if n not in INTEGRATION_TO_CALLBACK:
            raise ConfigError(path, f"unknown logger {n!r}", f"use none or one of {sorted(INTEGRATION_TO_CALLBACK)}")
        if n not in get_available_reporting_integrations():
            raise ConfigError(path, f"{n} is not installed here", f"pip install {n.replace('_', '-')}, or set {path}: none")


def validate_combination(r: Recipe) -> None:
    """Cross-field checks that would otherwise fail deep inside training."""
    check_ranges(r)
    a, t = r.algorithm, r.trainer
    try:
        from rl_router.precision import normalize

        normalize(r.model.autocast)
    except ValueError:
        raise ConfigError("model.autocast", f"unknown {r.model.autocast!r}", "use bfloat16 (bf16 autocast where bf16 is native) or null (float32)") from None
    if a.advantage is not None and a.advantage not in ("grpo", "rloo", "bopo", "all_names"):
        raise ConfigError("algorithm.advantage", f"unknown {a.advantage!r}", "use grpo, rloo, bopo or all_names, or null for algorithm.name's own")
    if a.advantage == "all_names":
        if r.rollout.decisions != "names":
            raise ConfigError("algorithm.advantage", "all_names takes every model's name at the route decision, which needs the name distribution", "set rollout.decisions: names")
        if a.decision_entropy_floor > 0 and a.decision_entropy_coef > 0:
            raise ConfigError("algorithm.decision_entropy_floor", "reads the entropy along sampled names, and all_names takes every name in turn", "set algorithm.decision_entropy_floor: 0")
        if a.name == "bopo":
            raise ConfigError("algorithm.advantage", "all_names weighs episodes by the router's probability of their model; BoPO's clamps assume sampled ones", "use algorithm.name: grpo with all_names")
    if a.all_names_weights not in ("policy", "uniform", "mirror"):
        raise ConfigError("algorithm.all_names_weights", f"unknown {a.all_names_weights!r}", "use policy (the exact gradient), uniform (the natural gradient's direction) or mirror (toward pi * exp(r / eta))")
    if not a.all_names_temperature > 0:
        raise ConfigError("algorithm.all_names_temperature", f"{a.all_names_temperature} is not > 0", "set a positive temperature in reward units, e.g. 0.1")
    if a.all_names_credit not in ("episode", "name"):
        raise ConfigError("algorithm.all_names_credit", f"unknown {a.all_names_credit!r}", "use episode (one advantage per episode) or name (the name's tokens take the all-names advantage, the rest the episode's own)")
    if a.all_names_episodes not in ("sampled", "scripted"):
        raise ConfigError("algorithm.all_names_episodes", f"unknown {a.all_names_episodes!r}", "use sampled (the router writes each episode) or scripted (the protocol's episode to each name, trained at the name only)")
    if a.all_names_episodes != "sampled" and a.advantage != "all_names":
        raise ConfigError("algorithm.all_names_episodes", "scripts all-names groups, and this run samples its names", "set algorithm.advantage: all_names, or leave all_names_episodes at sampled")
    if a.all_names_episodes == "scripted" and r.env.get("name", "router_r1") != "router_r1":
        raise ConfigError("algorithm.all_names_episodes", f"scripted episodes route once, and env {r.env.get('name')!r} routes at every step", "use all_names_episodes: sampled with this env")
    if a.all_names_episodes == "scripted" and t.get("mask_truncated_completions"):
        raise ConfigError("trainer.mask_truncated_completions", "masks episodes without an end-of-sequence token, and a scripted episode is cut after its name (no EOS): the loss would be zero", "set trainer.mask_truncated_completions: false, or all_names_episodes: sampled")
    if not a.protocol_anchor >= 0:
        raise ConfigError("algorithm.protocol_anchor", f"must be >= 0, got {a.protocol_anchor}", "set algorithm.protocol_anchor: 0 (off) or a positive weight such as 1.0")
    if a.protocol_anchor > 0 and a.all_names_episodes != "scripted":
        raise ConfigError("algorithm.protocol_anchor", "anchors the script's protocol tokens, and this run's episodes are sampled (the loss already trains what the router writes)", "set algorithm.all_names_episodes: scripted, or algorithm.protocol_anchor: 0")
    if a.all_names_weights_in_loss and (a.all_names_episodes != "scripted" or a.all_names_weights != "mirror"):
        raise ConfigError("algorithm.all_names_weights_in_loss", "reads each group's mirror target from the loss's forward of scripted names", "set algorithm.all_names_episodes: scripted and all_names_weights: mirror, or all_names_weights_in_loss: false")
    if a.all_names_weights_in_loss and int(t.get("num_iterations", 1)) != 1:
        raise ConfigError("trainer.num_iterations", "reuses a generation for several optimizer steps, and algorithm.all_names_weights_in_loss reads the target from the weights the loss moves", "set trainer.num_iterations: 1, or algorithm.all_names_weights_in_loss: false")
    if a.all_names_weights_in_loss and t.get("steps_per_generation") is not None and int(t["steps_per_generation"]) != int(t.get("gradient_accumulation_steps", 1)):
        raise ConfigError("trainer.steps_per_generation", "spreads a generation over several optimizer steps, and algorithm.all_names_weights_in_loss reads the target from the weights the loss moves", "set it to trainer.gradient_accumulation_steps, or algorithm.all_names_weights_in_loss: false")
    if not a.prompt_gradient and bool(t.get("gradient_checkpointing", True)):
        raise ConfigError("algorithm.prompt_gradient", "false reads each prompt's cache, which gradient checkpointing drops (TRL turns it on by default)", "set trainer.gradient_checkpointing: false")
    if a.microbatch_tokens is not None and not (isinstance(a.microbatch_tokens, int) and not isinstance(a.microbatch_tokens, bool) and a.microbatch_tokens > 0):
        raise ConfigError("algorithm.microbatch_tokens", f"{a.microbatch_tokens!r} is not a positive number of tokens", "set e.g. 4096, or null for TRL's micro-batches as they are")
    if a.microbatch_tokens is not None:
        if t.get("loss_type", "dapo") not in LOSS_TYPES:
            raise ConfigError("trainer.loss_type", f"{t.get('loss_type')!r} has no known normalisation to split into algorithm.microbatch_tokens pieces", f"use one of {', '.join(LOSS_TYPES)}, or algorithm.microbatch_tokens: null")
        for k, off, why in (("entropy_coef", 0.0, "a mean over each micro-batch's tokens"), ("use_adaptive_entropy", False, "a mean over each micro-batch's tokens"),
                            ("top_entropy_quantile", 1.0, "a quantile of each micro-batch")):
            if k in t and t[k] != off:
                raise ConfigError(f"trainer.{k}", f"is {why}, which pieces of algorithm.microbatch_tokens would change", f"set trainer.{k}: {str(off).lower()}, or algorithm.microbatch_tokens: null")
    if a.all_names_credit != "episode" and a.advantage != "all_names":
        raise ConfigError("algorithm.all_names_credit", "splits all-names advantages, and this run samples its names", "set algorithm.advantage: all_names, or leave all_names_credit at episode")
    if a.all_names_weights != "policy" and a.advantage != "all_names":
        raise ConfigError("algorithm.all_names_weights", "weighs all-names groups, and this run samples its names", "set algorithm.advantage: all_names, or leave all_names_weights at policy")
    if a.advantage == "bopo" and a.name != "bopo":
        raise ConfigError("algorithm.advantage", "bopo's reference-guided advantage compares episodes with BoPO's boundary-relative reward", "set algorithm.name: bopo")
    try:
        r.data.synthetic_template.format(topic="t", i=0)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError("data.synthetic_template", f"{r.data.synthetic_template!r} is not a question template ({e})", "use {topic} and {i} only, e.g. 'Synthetic {topic} task #{i}'") from None
    if r.curve.keep_best and not (r.curve.every_steps and r.curve.validation_n and r.data.validation_fraction > 0):
        raise ConfigError("curve.keep_best", "picks the checkpoint by validation reward, and this recipe measures none",
                          "set curve.every_steps > 0, curve.validation_n > 0 and data.validation_fraction > 0 (train tasks set aside), or keep_best: false")
    if r.rollout.decisions not in ("names", "free"):
        raise ConfigError("rollout.decisions", f"unknown {r.rollout.decisions!r}", "use names (sample the name distribution evaluation decides by) or free (token by token)")
    if r.trainer.get("use_vllm") and r.rollout.decisions == "names":
        raise ConfigError("rollout.decisions", "names is sampled by rl-router's own decoder; vLLM generates every token itself", "set rollout.decisions: free with trainer.use_vllm (evaluation still decides by name)")
    if r.rollout.protocol not in ("tags", "tools"):
        raise ConfigError("rollout.protocol", f"unknown {r.rollout.protocol!r}", "use tags (<route model=...>) or tools (native tool calls)")
    if a.name not in ("grpo", "rloo", "bopo"):
        raise ConfigError("algorithm.name", f"unknown {a.name!r}", "use grpo, rloo or bopo")
    if a.sft_mix not in ("efficient", "stepwise", "both", "agreement", "per_topic", "format"):
        raise ConfigError("algorithm.sft_mix", f"unknown {a.sft_mix!r}", "use efficient, stepwise, both, agreement, per_topic or format")
    if a.sft_mix == "agreement" and r.env.get("name", "router_r1") == "router_r1" and int(r.env.get("max_turns", 4)) < 4:
        raise ConfigError("env.max_turns", f"{r.env.get('max_turns')} is too few for sft_mix: agreement (two cheap calls, the strong one, an answer)", "set env.max_turns: 4")
    if a.cascade_models is not None and (not isinstance(a.cascade_models, list) or len(a.cascade_models) != 3):
        raise ConfigError("algorithm.cascade_models", f"expected [cheap_a, cheap_b, strong], got {a.cascade_models!r}", "three model names, or null to fit them on the train tasks")
    if a.sft_style not in ("compact", "verbatim"):
        raise ConfigError("algorithm.sft_style", f"unknown {a.sft_style!r}", "use compact or verbatim")
    if a.strong_only_share is not None and not 0.0 <= a.strong_only_share <= 1.0 - a.neither_rate:
        raise ConfigError("algorithm.strong_only_share", f"{a.strong_only_share} is outside [0, 1 - neither_rate] with neither_rate {a.neither_rate}", f"use a share in [0, {1.0 - a.neither_rate:g}], or null for equal strata")
    d = r.data
    if d.heldout_by not in ("task", "topic", "files"):
        raise ConfigError("data.heldout_by", f"unknown {d.heldout_by!r}", "use task (random tasks held out), topic (whole topics held out, e.g. MMLU subjects) or files (the tasks of pool.files held out)")
    for name in ("heldout_fraction", "validation_fraction"):
        if not 0.0 <= getattr(d, name) < 1.0:
            raise ConfigError(f"data.{name}", f"{getattr(d, name)} is outside [0, 1)", "use a share such as 0.1")
    agentic = r.env.get("name") == "agentic"
    if agentic != (r.data.source in WORLD_SOURCES):
        fix = f"use data.source: one of {list(WORLD_SOURCES)}" if agentic else "use env.name: agentic"
        raise ConfigError("data.source" if agentic else "env.name", f"env {r.env.get('name')!r} cannot run data.source {r.data.source!r} tasks", fix)
    g = int(t.get("num_generations", 8))
    procs = world_size()
    batch = int(t.get("per_device_train_batch_size", 8)) * procs * int(t.get("steps_per_generation") or t.get("gradient_accumulation_steps", 1))
    if g < 2:
        raise ConfigError("trainer.num_generations", f"must be >= 2 for group advantages, got {g}")
    if batch % g:  # TRL's own rule: groups may span processes
        raise ConfigError("trainer.num_generations", f"{g} does not divide the generation batch {batch} (per_device_train_batch_size x {procs} process(es) x steps_per_generation)", f"pick a divisor of {batch}")


def validate_against_pool(r: Recipe, pool: Any, tasks: list[Task]) -> tuple[str, str]:
    """Checks that need the pool (built from config, before any model loads): named boundary
    models exist, and the per-task budget covers one call of each boundary model on a typical
    task (else always-<model> could never call it and the boundaries say nothing).
    Returns the (cheap, strong) boundary model names."""
    from rl_router.prompts import SHORT_QUERY, pool_messages

    from rl_router.aio import run_sync

    problems = run_sync(pool.check())  # reachable endpoints, accepted keys, served models
    if problems:
        raise ConfigError("pool", "is not usable: " + "; ".join(problems))
    cheap = r.algorithm.cheap_model or pool.cheapest().name
    strong = r.algorithm.strong_model or pool.strongest().name
    for field_, m in (("algorithm.cheap_model", cheap), ("algorithm.strong_model", strong)):
        if not pool.has_model(m):
            raise ConfigError(field_, f"{m!r} is not in the pool", f"use one of {pool.model_names}")
    if (r.algorithm.advantage or r.algorithm.name) == "all_names":
        k, g = len(pool.model_names), int(r.trainer.get("num_generations", 8))
        if g % k:
            raise ConfigError("trainer.num_generations", f"{g} is not a multiple of the pool's {k} models, which algorithm.advantage: all_names takes in turn in each group", f"use {k} or a multiple of it")
    cfg = r.env_config()
    budget = cfg.budget
    if budget is not None and tasks:
        sample = tasks[: min(16, len(tasks))]

        def typical_cost(model: str) -> float:
            """The median cost bound (what the env reserves before the call) of one call by
            `model` on the sample: one agent step, or the task with a short sub-query."""
            if r.env.get("name") == "agentic":
                from rl_router.envs import make_env

                env = make_env("agentic", pool, config=cfg)
                costs = []
                for t in sample:
                    env.reset(t)
                    costs.append(env.step_cost(model))
            else:
                costs = [pool.estimate_cost(model, pool_messages(t.question, SHORT_QUERY), max_tokens=cfg.pool_max_tokens, context=t.context()) for t in sample]
            return sorted(costs)[len(costs) // 2]

        for role, m in (("cheapest", cheap), ("strongest", strong)):
            c = typical_cost(m)
            if budget < c:
                raise ConfigError(
                    "env.budget", f"${budget:g} per task is below one call to the {role} boundary model {m} on a typical task (up to ${c:.6f}, "
                    f"the bound the env reserves: {'exact for this pool' if c == 0 or pool.__class__.__name__ in ('RecordedPool', 'SimulatedPool') else f'prompt bytes + env.pool_max_tokens={cfg.pool_max_tokens} of output'})",
                    f"raise env.budget above {c:.6f}" + ("" if pool.__class__.__name__ in ("RecordedPool", "SimulatedPool") else ", or lower env.pool_max_tokens"))
    return cheap, strong


def apply_overrides(raw: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """`--set a.b=value` overrides; values are parsed as YAML (numbers, lists, null...)."""
    raw = copy.deepcopy(raw)
    for s in sets:
        if "=" not in s:
            raise ConfigError("--set", f"{s!r} is not key=value", "e.g. --set env.budget=0.02")
        key, val = s.split("=", 1)
        node = raw
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {key}", "empty field name", "e.g. --set trainer.max_steps=8")
        for i, p in enumerate(parts[:-1]):
            if node.get(p) is None:  # a missing section, or one left empty in the file (`trainer:`)
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}", f"{'.'.join(parts[: i + 1])} is a value, not a section", f"set {'.'.join(parts[: i + 1])}=VALUE")
        from rl_router.parsing import parse_yaml

        try:
            parsed = parse_yaml(val, f"--set {key}")
        except ConfigError as e:
            shown = repr(val) if len(val) <= 60 else repr(val[:57] + "...")
            raise ConfigError(f"--set {key}", f"{shown} is not a valid YAML value ({str(e).split(': ', 1)[-1].split(' -> ')[0]})", "quote text, write lists as [a, b]") from None
        if isinstance(parsed, str):  # YAML 1.1 leaves 1e-5 a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        node[parts[-1]] = parsed
    return raw


def load_recipe(path: str | Path | None = None, sets: list[str] | None = None) -> Recipe:
    """Load and validate a recipe file (None: the embedded defaults, = recipes/gsm8k.yaml)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError("recipe", f"{p} does not exist", "give a recipe YAML file, e.g. recipes/quickstart.yaml")
        if p.is_dir():
            raise ConfigError("recipe", f"{p} is a folder", "give a recipe YAML file inside it, e.g. recipes/quickstart.yaml")
        from rl_router.parsing import read_yaml

        raw = read_yaml(p, "recipe")
        if raw is None:
            raise ConfigError("recipe", f"{p} is empty", "write a recipe (see recipes/quickstart.yaml), or run `rl-router quickstart` for the defaults")
        if not isinstance(raw, dict):
            raise ConfigError("recipe", f"{p} holds {type(raw).__name__} {str(raw)[:40]}, not sections", "write sections such as trainer: {max_steps: 8} (see recipes/quickstart.yaml)")
        raw.setdefault("output_dir", f"outputs/{p.stem}")  # a recipe without one writes beside its own name, never into another recipe's outputs
    return recipe_from_dict(apply_overrides(raw, sets or []))


def recipe_for_target(target: str, recipe_path: str | None, sets: list[str]) -> Recipe:
    """The recipe to evaluate / export / serve `target` with: `recipe_path` when given, else the
    recipe.json a training run (or an export) keeps beside its weights, else the defaults."""
    if recipe_path is None:
        # the model folder's own recipe (final/recipe.json: the recipe that produced those weights),
        # then the run's, up to two levels up (a run's rl/checkpoint-N)
        t = Path(target)
        for saved in (t / "final" / "recipe.json", t / "recipe.json", t.parent / "recipe.json", t.parent.parent / "recipe.json"):
            if saved.is_file():
                from rl_router.parsing import read_json

                raw = read_json(saved, "recipe", fix="restore it from the run, or pass --recipe")
                if not isinstance(raw, dict):
                    raise ConfigError("recipe", f"{saved} holds {type(raw).__name__}, not a recipe", "restore it from the run, or pass --recipe")
                return recipe_from_dict(apply_overrides(raw, sets))
    return load_recipe(recipe_path, sets)


def load_pool_file(path: str) -> dict[str, Any]:
    """A pool section from YAML: a recipe (its `pool:`) or a file that is a pool section itself."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--pool", f"{p} is not a file", "give a YAML file holding a pool section ({type: openai, models: ...}) or a recipe")
    from rl_router.parsing import read_yaml

    raw = read_yaml(p, "--pool")
    section = raw if isinstance(raw, dict) and "type" in raw else raw.get("pool") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise ConfigError("--pool", f"{p} holds neither a pool section ({{type: ..., models: ...}}) nor a recipe with one", "see README, section Pools")
    return section
