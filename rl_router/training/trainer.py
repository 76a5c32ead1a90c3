"""RouterGRPOTrainer: TRL 1.16's GRPOTrainer for multi-turn routing, with GRPO, RLOO or BoPO advantages.

What it adds to TRL, and why:
- rollouts come from our engine through TRL's `rollout_func` hook; `env_mask` marks pool
  tokens so TRL zeroes their loss (TRL uses `env_mask` only when `tools` is empty; we
  never pass tools);
- the advantage estimator is a constructor switch. TRL computes GRPO advantages inline;
  for RLOO, BoPO and all-names groups (advantages.py) we recompute them from the same (all-process, gathered) rewards after
  TRL's scoring, so groups that span ranks are whole before advantages are taken;
- the loss's log-probs are computed only at the tokens the loss reads, and at name decisions
  within the renormalised distribution the rollout sampled (training/logprobs.py), not over
  the whole vocabulary: the policy trained is the policy evaluated and shipped;
- an entropy floor on the name decisions (`decision_entropy_floor`, `decision_entropy_coef`;
  training/exploration.py): exploration that survives the early collapse onto one model;
- `prompt_gradient: false`: the loss runs each prompt but its last token without gradient (a
  truncated gradient: the weights learn only through the completion tokens' and the last
  prompt token's own computation, which read the earlier prompt's keys and values as
  constants), a forward of the prompt instead of a forward and
  backward: for single-shot routers, whose completions are a few tokens after a long prompt;
- `trim_padding`: each micro-batch runs at its own width, not the generation batch's
  (training/microbatch.py): a group's prompt without the longest task's left padding;
- `microbatch_tokens`: each micro-batch's loss runs in pieces of at most that many tokens,
  each backwarded before the next (training/microbatch.py): memory bounded by tokens, not
  rows; the pieces' weighted losses sum to the micro-batch's, so the gradient is the same;
- episode metrics (cost, routes, quality, pool and format error rates) and what carries the
  signal (groups with zero reward variance, the entropy of each route decision) are logged
  next to TRL's, so `report_to` and the training curves see them;
- checkpoints are written to a staging folder and renamed into place (by rank 0, after a
  barrier: every rank writes its own RNG state there) when complete.

Contract pinned against trl==1.16.0 (tests/test_trainer.py fails loudly if it moves):
`_calculate_rewards(inputs, prompts, completions, completion_ids_list)` returns the
gathered (N_all, n_funcs) rewards; `_generate_and_score_completions` returns a dict with a
per-process `advantages` tensor; the rollout hook receives prompts repeated
`num_generations` times, in contiguous groups.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer

from rl_router.errors import ConfigError
from rl_router.recipe import LOSS_TYPES
from rl_router.rollout.names import STEMS
from rl_router.training import microbatch, names_in_loss
from rl_router.training.anchor import anchor_mask, anchor_nll_sum
from rl_router.training.advantages import ALL_NAMES_CREDITS, ALL_NAMES_WEIGHTS, all_names_advantages, bopo_advantages, name_credit, rloo_advantages
from rl_router.training.boundary import BoPOReward, boundary_reward_refs
from rl_router.training.exploration import entropy_shortfall
from rl_router.training.logprobs import PromptCache, allowed_tensor, causal_lm, packs, policy_logps, rescales_logits

ADVANTAGES = ("grpo", "rloo", "bopo", "all_names")
#: where all-names groups' episodes come from: sampled by the router after the forced name, or
#: scripted and cut at the name (rollout/decision_episodes.py)
ALL_NAMES_EPISODES = ("sampled", "scripted")
#: the stems after which an action names the model to call (tags and tool calls: rollout/names.py)
ROUTE_STEMS = tuple(stem for stem, _, kind in STEMS if kind == "route")
#: the stems after which an answer adopts a called model's reply by name
ADOPT_STEMS = tuple(stem for stem, _, kind in STEMS if kind == "adopt")
SEEN_FILE = "rl_router_seen.json"


def truncation_refused() -> ConfigError:
    """`prompt_gradient: false` where TRL's own log-prob pass must run (it would train the full gradient, not the truncated one asked for)."""
    return ConfigError("algorithm.prompt_gradient", "false is trained by rl-router's own log-prob pass, and this model needs TRL's (rescaled or soft-capped logits, "
                       "an MoE aux loss or multimodal inputs), which differentiates the whole prompt", "set algorithm.prompt_gradient: true")


class RouterGRPOTrainer(GRPOTrainer):
    def __init__(self, *args: Any, advantage: str = "grpo", all_names_weights: str = "policy", all_names_temperature: float = 0.1, all_names_credit: str = "episode", all_names_episodes: str = "sampled", bopo_reward: BoPOReward | None = None, bopo_beta: float = 0.5, decision_entropy_floor: float = 0.0,
                 decision_entropy_coef: float = 0.0, trim_padding: bool = False, prompt_gradient: bool = True, microbatch_tokens: int | None = None, protocol_anchor: float = 0.0,
                 all_names_weights_in_loss: bool = False, **kwargs: Any):
        if advantage not in ADVANTAGES:
            raise ValueError(f"algorithm.name: unknown {advantage!r}; use one of {ADVANTAGES}")
        if advantage == "bopo" and bopo_reward is None:
            raise ValueError("algorithm.name=bopo needs boundary records (a BoPOReward)")
        super().__init__(*args, **kwargs)
        self.advantage = advantage
        if all_names_weights not in ALL_NAMES_WEIGHTS:
            raise ValueError(f"algorithm.all_names_weights: unknown {all_names_weights!r}; use one of {ALL_NAMES_WEIGHTS}")
        self.all_names_weights = all_names_weights
        if not all_names_temperature > 0:
            raise ValueError(f"algorithm.all_names_temperature must be > 0, got {all_names_temperature}")
        self.all_names_temperature = float(all_names_temperature)
        if all_names_credit not in ALL_NAMES_CREDITS:
            raise ValueError(f"algorithm.all_names_credit: unknown {all_names_credit!r}; use one of {ALL_NAMES_CREDITS}")
        if all_names_credit != "episode" and advantage != "all_names":
            raise ValueError("algorithm.all_names_credit splits all-names advantages; set algorithm.advantage: all_names")
        self.all_names_credit = all_names_credit
        if all_names_episodes not in ALL_NAMES_EPISODES:
            raise ValueError(f"algorithm.all_names_episodes: unknown {all_names_episodes!r}; use one of {ALL_NAMES_EPISODES}")
        if all_names_episodes != "sampled" and advantage != "all_names":
            raise ValueError("algorithm.all_names_episodes scripts all-names groups; set algorithm.advantage: all_names")
        # scripted mirror weights read from the loss's own forward instead of a names pass (training/names_in_loss.py)
        if all_names_weights_in_loss and (all_names_episodes != "scripted" or all_names_weights != "mirror" or self.num_iterations != 1
                                          or self.args.steps_per_generation != self.args.gradient_accumulation_steps):
            raise ValueError("algorithm.all_names_weights_in_loss reads a group's mirror target from the loss's forward under the weights it moves: it needs "
                             "all_names_episodes: scripted, all_names_weights: mirror and one generation per optimizer step (trainer.num_iterations: 1, "
                             "trainer.steps_per_generation = gradient_accumulation_steps)")
        if all_names_weights_in_loss and (rescales_logits(self.model) or getattr(self, "aux_loss_enabled", False)):
            raise ValueError("algorithm.all_names_weights_in_loss reads the names' log-probs from rl-router's own log-prob pass, and this model needs TRL's "
                             "(rescaled or soft-capped logits, or an MoE aux loss); set algorithm.all_names_weights_in_loss: false")
        self.all_names_weights_in_loss = bool(all_names_weights_in_loss)
        self._route_names: list[str] = []  # names_in_loss: route targets by index, as the generation hands them to the loss
        self._names_k = 0  # names_in_loss: the pool's size (names a group takes in turn)
        self._names_piece: dict[str, Any] | None = None  # names_in_loss: the loss forward's inputs, whose advantages its log-probs fill
        self._names_weighed = False  # names_in_loss: whether this loss forward filled them
        self._kept_casts: dict[int, Any] = {}  # frozen weights' bf16 copies, made once for the run (_frozen_casts)
        self.all_names_episodes = all_names_episodes  # scripted: the rollout hands cut episodes (rollout/decision_episodes.py), their names' log-probs come from _scripted_name_logps
        self.bopo_reward = bopo_reward
        # False: the loss runs prompts but their last token without gradient (logprobs.policy_logps): a truncated gradient at a prompt's forward instead of its forward and backward
        self.prompt_gradient = bool(prompt_gradient)
        if not self.prompt_gradient and self.args.gradient_checkpointing:
            raise ValueError("algorithm.prompt_gradient: false reads the prompt's cache, which gradient checkpointing drops; set trainer.gradient_checkpointing: false")
        if not self.prompt_gradient and (rescales_logits(self.model) or getattr(self, "aux_loss_enabled", False)):
            raise truncation_refused()
        # scripted episodes without the prompt's gradient: the names' log-prob pass keeps each
        # prompt's forward for the loss (logprobs.PromptCache), read only within the optimizer
        # step that filled it (its tag), so under the same weights whatever num_iterations and
        # steps_per_generation say
        self._prompt_cache = PromptCache() if all_names_episodes == "scripted" and not self.prompt_gradient else None
        self._loss_reads_cache = False
        self.bopo_beta = bopo_beta
        # the script's protocol tokens held by a supervised term (training/anchor.py); 0: off
        if not protocol_anchor >= 0 or (protocol_anchor > 0 and all_names_episodes != "scripted"):
            raise ValueError(f"algorithm.protocol_anchor: {protocol_anchor} needs to be >= 0, and > 0 only with algorithm.all_names_episodes: scripted")
        self.protocol_anchor = float(protocol_anchor)
        self._anchor_total: int | None = None  # the micro-batch's anchored tokens, when its loss runs in pieces
        self._last_logps: torch.Tensor | None = None
        # the entropy floor on name decisions (training/exploration.py); off when either is 0
        self.decision_entropy_floor, self.decision_entropy_coef = float(decision_entropy_floor), float(decision_entropy_coef)
        self._last_entropies: torch.Tensor | None = None
        # each micro-batch at its own width (training/microbatch.py): only where positions may shift
        self.trim_padding = bool(trim_padding) and microbatch.shift_invariant(self.model)
        self.microbatch_tokens = self._checked_microbatch_tokens(microbatch_tokens)
        self._piece_weights = (1.0, 1.0)  # (policy loss, entropy floor) of the piece being run: microbatch.piece_weights
        if advantage == "all_names" and decision_entropy_floor > 0 and decision_entropy_coef > 0:
            raise ValueError("algorithm.decision_entropy_floor reads the entropy along sampled names, and all_names takes every name in turn; set it to 0")
        if advantage == "rloo" and self.num_generations < 2:
            raise ValueError("trainer.num_generations must be >= 2 for RLOO")
        self._last_rewards_per_func: torch.Tensor | None = None
        self._last_inputs: list[dict[str, Any]] = []
        # what training has seen (all ranks): a "step" says little when a step is 2 tasks
        self.episodes_seen = 0
        self.tasks_seen: set[str] = set()
        # name decisions of the batch being scored / the micro-batch in the loss (logprobs.py)
        self._decision_lists: list[Any] | None = None
        self._script_lists: list[Any] | None = None
        self._decision_allowed: torch.Tensor | None = None
        self._logp_positions: torch.Tensor | None = None
        self._last_decisions: list[Any] = []

    def _checked_microbatch_tokens(self, budget: int | None) -> int | None:
        """The token budget of a loss piece, refused where pieces would not add up to TRL's
        micro-batch loss: terms TRL averages over its micro-batch's own tokens or quantiles, and
        DeepSpeed, whose engine counts one backward per micro-batch."""
        if budget is None:
            return None
        if not int(budget) > 0:
            raise ValueError(f"algorithm.microbatch_tokens must be a positive number of tokens, got {budget}; or null for TRL's micro-batches")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"algorithm.microbatch_tokens: trainer.loss_type {self.loss_type!r} has no known normalisation; use one of {LOSS_TYPES}")
        for on, field in ((self.is_deepspeed_enabled, "DeepSpeed (one backward per micro-batch)"), (self._entropy_bonus_enabled, "trainer.entropy_coef (a mean over the micro-batch's tokens)"),
                          (self.top_entropy_quantile < 1.0, "trainer.top_entropy_quantile (a quantile of the micro-batch)"), (self.aux_loss_enabled, "the router aux loss")):
            if on:
                raise ValueError(f"algorithm.microbatch_tokens cannot split the loss under {field}; set algorithm.microbatch_tokens: null")
        return int(budget)

    def _pieces(self, inputs: dict[str, Any]) -> list[tuple[int, int]]:
        """The micro-batch's row ranges under `microbatch_tokens` (microbatch.plan_pieces), the
        same on every rank: TRL's loss gathers per-row metrics once per call."""
        B = inputs["prompt_mask"].size(0)
        shared = not getattr(causal_lm(self.model), "is_gradient_checkpointing", False)
        packed = shared and packs(self.model) and not rescales_logits(self.model)  # our pass runs each group's completions packed (logprobs.py)
        return microbatch.the_same_on_every_rank(microbatch.plan_pieces(inputs, self.microbatch_tokens, trim=self.trim_padding, shared=shared, packed=packed), B)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        """TRL's loss, in pieces of at most `microbatch_tokens` tokens (`_pieces`): every piece
        but the last is run and backwarded here (without a DDP gradient sync: the last piece's
        backward, the trainer's own, syncs the sum), and the loss returned is the last piece's plus the
        others' detached values, so the trainer reports the micro-batch's loss and its backward
        adds the last piece's gradient. Pieces are weighted to sum to the micro-batch's loss
        (microbatch.piece_weights). Without gradient (evaluation) the pieces' losses are summed."""
        if self.microbatch_tokens is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        pieces = self._pieces(inputs)
        self._metrics["train" if self.model.training else "eval"]["loss/pieces"].append(float(len(pieces)))
        if len(pieces) == 1:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from contextlib import nullcontext

        policy_w = microbatch.piece_weights(inputs, pieces, self.loss_type)
        floor_w = microbatch.decision_weights(inputs, pieces)
        if self.protocol_anchor > 0:  # each piece's anchor is its summed NLL over the micro-batch's anchored tokens
            self._anchor_total = int(inputs["anchor_mask"].sum()) if "anchor_mask" in inputs else None
        backward = model.training and torch.is_grad_enabled()
        # DDP decides at the forward whether the backward syncs: the pieces before the last run inside no_sync
        no_sync = (lambda: self.accelerator.no_sync(model)) if backward and self.accelerator.num_processes > 1 else nullcontext
        done = 0.0
        try:
            for (s, e), wp, wf in zip(pieces[:-1], policy_w, floor_w):
                self._piece_weights = (wp, wf)
                with no_sync():
                    loss = self._compute_loss(model, microbatch.rows(inputs, s, e))
                    if backward:
                        self.accelerator.backward(loss)
                done = done + loss.detach()
            self._piece_weights = (policy_w[-1], floor_w[-1])
            s, e = pieces[-1]
            return self._compute_loss(model, microbatch.rows(inputs, s, e)) + done
        finally:
            self._piece_weights = (1.0, 1.0)
            self._anchor_total = None

    def _save_checkpoint(self, model, trial):  # type: ignore[override]
        """Atomic checkpoints: TRL/transformers write into OUT/.staging/checkpoint-N, which is
        renamed to OUT/checkpoint-N only once complete, so a kill during a save leaves the
        previous checkpoint the newest usable one. Old checkpoints rotate as usual."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = self._get_output_dir(trial=trial)
        staging = os.path.join(run_dir, ".staging")
        self._get_output_dir = lambda trial=None: staging  # type: ignore[method-assign]
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir  # back to the class method
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:  # what training has seen, so a resumed run counts on exactly
            import json

            with open(os.path.join(staging, name, SEEN_FILE), "w") as fh:
                json.dump({"episodes": self.episodes_seen, "tasks": sorted(self.tasks_seen)}, fh)
        # every rank writes its own files (rng_state_{rank}.pth) into the staging folder:
        # rank 0 may rename it only once all of them are done
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            dst = os.path.join(run_dir, name)
            if os.path.exists(dst):
                shutil.rmtree(dst)
            os.replace(os.path.join(staging, name), dst)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit, best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def train(self, resume_from_checkpoint: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if isinstance(resume_from_checkpoint, str) and os.path.isfile(os.path.join(resume_from_checkpoint, SEEN_FILE)):
            import json

            with open(os.path.join(resume_from_checkpoint, SEEN_FILE)) as fh:
                seen = json.load(fh)
            self.episodes_seen, self.tasks_seen = int(seen["episodes"]), set(seen["tasks"])
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _frozen_casts(self) -> Any:
        """Under bf16 autocast on a CPU, the frozen float32 weights of the decoder (LoRA's base
        layers; not the output layer) as bf16 copies made once for the run (precision.frozen_weights_cast with
        a kept dict): autocast casts a frozen weight again at every forward, which for a
        single-shot router's short completion forward cost about as much as its matmuls. The
        same values autocast would produce; trainable weights are untouched."""
        from contextlib import nullcontext

        if not (self.args.bf16 and self.accelerator.device.type == "cpu") or self.is_deepspeed_enabled:
            return nullcontext()
        from rl_router.precision import frozen_weights_cast

        model = self.accelerator.unwrap_model(self.model)
        # the output layer stays float32: the loss applies it outside autocast (logprobs.head_logps)
        return frozen_weights_cast(model, torch.bfloat16, keep=self._kept_casts, skip=(causal_lm(model).get_output_embeddings(),))

    def _prepare_inputs(self, generation_batch):  # type: ignore[override]
        """TRL's, without its shuffle of the generation batch before splitting it into
        micro-batches: a micro-batch then holds whole groups, whose shared prompt runs once
        (logprobs.shared_prompt_hidden). With num_iterations 1 every micro-batch of a
        generation feeds one optimizer step (steps_per_generation = gradient_accumulation_steps
        by default) and the "dapo" loss normalises by the generation's token count, so the
        step's gradient is the same sum whatever the split."""
        import trl.trainer.grpo_trainer as grpo

        shuffle = grpo.shuffle_sequence_dict
        grpo.shuffle_sequence_dict = lambda d: d
        try:
            return super()._prepare_inputs(generation_batch)
        finally:
            grpo.shuffle_sequence_dict = shuffle

    @staticmethod
    def _uncount_cut_completions(m: dict) -> None:
        """Scripted episodes' completions are cut after the name by design (no EOS): TRL would log
        every one as clipped by max_completion_length and no terminated lengths. Their step's
        values are replaced by what is true: none clipped (`completions/clipped_ratio` 0), all cut
        after the name (`completions/cut_after_name_ratio` 1), terminated lengths = their lengths."""
        if m.get("completions/clipped_ratio"):
            m["completions/clipped_ratio"][-1] = 0.0
            m["completions/cut_after_name_ratio"].append(1.0)
            for end in ("mean", "min", "max"):
                if m.get(f"completions/{end}_terminated_length") and m.get(f"completions/{end}_length"):
                    m[f"completions/{end}_terminated_length"][-1] = m[f"completions/{end}_length"][-1]

    def _generate(self, prompts):  # type: ignore[override]
        out = super()._generate(prompts)
        if self.all_names_episodes == "scripted" and self.model.training:  # TRL has just logged this generation's completion lengths
            self._uncount_cut_completions(self._metrics["train"])
        extra = out[5]
        self._decision_lists = extra.pop("decision_tokens", None)
        self._script_lists = extra.get("script_mask")  # scripted episodes: the tokens the script wrote (the protocol anchor's)
        self._last_decisions = extra.get("decisions") or []
        return out

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, compute_aux_loss=False, **mm):  # type: ignore[override]
        """The log-probs of the tokens the loss reads, renormalised at name decisions
        (logprobs.py); TRL's own pass for multimodal inputs, MoE aux losses and rescaled logits."""
        self._last_entropies = self._last_logps = None
        if compute_aux_loss or any(v is not None for v in mm.values()) or rescales_logits(model):
            if not self.prompt_gradient:  # TRL's pass would train the full gradient, not the truncated one asked for
                raise truncation_refused()
            res = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **mm)
            self._last_logps = res[0]  # every completion token's: the protocol anchor's among them
            return res
        allowed = self._decision_allowed
        if allowed is None and self._decision_lists is not None and len(self._decision_lists) == input_ids.size(0):
            allowed = allowed_tensor(self._decision_lists, logits_to_keep, device=input_ids.device)
        if allowed is not None and allowed.size(0) != input_ids.size(0):
            allowed = None
        positions = self._logp_positions if self._logp_positions is not None and self._logp_positions.shape == (input_ids.size(0), logits_to_keep) else None
        logps, ent = policy_logps(model, input_ids, attention_mask, logits_to_keep, temperature=self.temperature, positions=positions, allowed=allowed, batch_size=batch_size,
                                  compute_entropy=compute_entropy, autocast=self.accelerator.autocast, prompt_grad=self.prompt_gradient,
                                  prompt_cache=self._prompt_cache if self._loss_reads_cache else None)
        if self._names_piece is not None and self._names_piece["prompt_ids"].size(0) == input_ids.size(0):
            self._weigh_names(self._names_piece, logps)  # TRL reads the advantages after this pass
        self._last_entropies = ent  # within the allowed sets at decisions: what the entropy floor reads
        self._last_logps = logps  # what the protocol anchor reads (its positions are among these)
        return logps, ent, None

    def _compute_loss(self, model, inputs):  # type: ignore[override]
        if self.trim_padding:
            inputs = microbatch.trim_padding(inputs)
        self._decision_allowed = inputs.get("decision_allowed")
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        self._logp_positions = mask.bool()  # the loss reads only these tokens' log-probs
        anchored = inputs.get("anchor_mask") if self.protocol_anchor > 0 else None
        if anchored is not None:  # and the anchor the script's tokens' (TRL's loss multiplies them by its mask: 0)
            self._logp_positions = self._logp_positions | anchored
        # the prompts kept by this optimizer step's names pass, under these very weights
        c = self._prompt_cache
        self._loss_reads_cache = c is not None and self.model.training and c.tag == self.state.global_step
        self._names_piece = inputs if names_in_loss.TARGET in inputs and self.model.training else None
        self._names_weighed = False
        try:
            with self._frozen_casts():
                loss = super()._compute_loss(model, inputs)
            if self._names_piece is not None and not self._names_weighed:  # TRL's loss read the NaN placeholders: stop before any optimizer step
                raise RuntimeError("algorithm.all_names_weights_in_loss: the loss ran without computing its advantages (its log-probs did not come from "
                                   "rl-router's pass); set algorithm.all_names_weights_in_loss: false")
            wp, wf = self._piece_weights  # 1, 1 unless this is a piece of a micro-batch (compute_loss)
            if wp != 1.0:
                loss = loss * wp
            if self.decision_entropy_floor > 0 and self.decision_entropy_coef > 0:
                loss = loss + wf * self._entropy_floor_term()
            if anchored is not None:
                loss = loss + self._anchor_term(anchored)
            return loss
        finally:
            self._decision_allowed = self._logp_positions = self._last_entropies = self._last_logps = self._names_piece = None
            self._loss_reads_cache = False

    def _anchor_term(self, anchored: torch.Tensor) -> torch.Tensor | float:
        """coef x the anchored tokens' summed NLL / the micro-batch's anchored tokens (the pieces'
        terms sum to the micro-batch's mean), scaled for gradient accumulation as the entropy
        floor is; the mean NLL per token logged as `protocol/nll` (training/anchor.py)."""
        n = int(anchored.sum())
        if self._last_logps is None or n == 0:
            return 0.0
        nll = anchor_nll_sum(self._last_logps, anchored)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["protocol/nll"].append(float(nll.detach()) / n)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return self.protocol_anchor * nll / (self._anchor_total or n) / accumulation

    def _entropy_floor_term(self) -> torch.Tensor | float:
        """coef x the name decisions' mean shortfall below the floor (exploration.py), scaled
        for gradient accumulation as TRL scales its own entropy bonus; logged as
        `decision/entropy_shortfall`."""
        if self._last_entropies is None:
            return 0.0
        short = entropy_shortfall(self._last_entropies, self._decision_allowed, self.decision_entropy_floor)
        if short is None:
            return 0.0
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["decision/entropy_shortfall"].append(float(short.detach()))
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return self.decision_entropy_coef * short / accumulation

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[override]
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards_per_func
        self._last_inputs = inputs
        return rewards_per_func

    def _log_signal(self, m: Any, mode: str) -> None:
        """What can carry a learning signal this step: the share of groups whose rewards are all
        equal (their GRPO advantages are 0 whatever the scaling; TRL's `frac_reward_zero_std`
        under `scale_rewards: batch` reads the whole batch instead), and the entropy of each
        name decision in nats (route: among the pool's models; adopt: among the called ones).
        A decision with no entropy cannot be explored."""
        rpf = self._last_rewards_per_func
        G = self.num_generations if mode == "train" else self.num_generations_eval
        if rpf is not None and G and rpf.shape[0] % G == 0:
            r = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1).view(-1, G)
            m["signal/zero_std_groups"].append(float(((r.max(dim=1).values - r.min(dim=1).values).abs() < 1e-9).float().mean()))
        decisions = [d for turns in gather_object([list(self._last_decisions)]) for ep in turns for t in (ep or []) for d in t]
        enumerated = getattr(self, "advantage", None) == "all_names"  # route names taken in turn: their sampled shares and entropies say nothing (_log_route_distribution)
        for kind, stems in (("route", ROUTE_STEMS), ("adopt", ADOPT_STEMS)):
            if enumerated and kind == "route":
                continue
            ent = [float(d["entropy"]) for d in decisions if d.get("entropy") is not None and d.get("stem") in stems]
            if ent:
                m[f"decision/{kind}_entropy"].append(sum(ent) / len(ent))
        route_decisions = [d for d in decisions if d.get("stem") in ROUTE_STEMS]
        routes = [d["choice"] for d in route_decisions]
        for name in [] if enumerated else sorted({n for d in route_decisions for n in d.get("names") or []}):  # what the sampled policy calls
            m[f"decision/route_share/{name}"].append(sum(1 for c in routes if c == name) / len(routes))

    def _log_route_distribution(self, m: Any, names: list[str | None], logps: list[float], G: int) -> None:
        """Under all-names groups the sampled shares are equal by construction: log the router's
        own probability of each model (the group's p of each name, averaged over groups) and
        the exact entropy of that distribution, in nats."""
        import math

        probs: dict[str, list[float]] = {}
        ents = []
        for gi in range(len(names) // G):
            row = [(n, math.exp(lp)) for n, lp in zip(names[gi * G : (gi + 1) * G], logps[gi * G : (gi + 1) * G]) if n is not None and lp == lp]
            per: dict[str, list[float]] = {}
            for n, p in row:
                per.setdefault(n, []).append(p)
            dist = {n: sum(v) / len(v) for n, v in per.items()}
            z = sum(dist.values())
            if z <= 0:
                continue
            ents.append(-sum(p / z * math.log(p / z) for p in dist.values() if p > 0))
            for n, p in dist.items():
                probs.setdefault(n, []).append(p / z)
        if ents:
            m["decision/route_entropy_exact"].append(sum(ents) / len(ents))
        for n, v in sorted(probs.items()):
            m[f"decision/route_prob/{n}"].append(sum(v) / len(v))

    def _generate_and_score_completions(self, inputs):  # type: ignore[override]
        try:
            out = super()._generate_and_score_completions(inputs)
            decision_lists = self._decision_lists  # this process's episodes' (position, allowed set) lists
            if decision_lists is not None:  # travels with the batch through TRL's shuffle and split into micro-batches
                allowed = allowed_tensor(decision_lists, out["completion_ids"].size(1), device=out["completion_ids"].device)
                if allowed is not None:
                    out["decision_allowed"] = allowed
            if self.protocol_anchor > 0 and self.model.training:  # chosen once per group here, then cut with the batch
                if self._script_lists is None:
                    raise ValueError("protocol_anchor: this batch's episodes carry no script_mask (scripted all-names episodes: rollout.engine.make_rollout_func(scripted=..., anchor_episode=True))")
                out["anchor_mask"] = anchor_mask(out, self._script_lists)
        finally:
            self._decision_lists = self._script_lists = None
        mode = "train" if self.model.training else "eval"
        local = self._last_inputs
        fields = {k: gather_object([inp.get(k) for inp in local]) for k in ("task_id", "quality", "cost", "n_routes", "pool_errors", "format_error")}
        m = self._metrics[mode]
        n = max(1, len(fields["task_id"]))
        if mode == "train":
            self.episodes_seen += len(fields["task_id"])
            self.tasks_seen.update(str(t) for t in fields["task_id"] if t is not None)
            m["episodes/seen"].append(float(self.episodes_seen))
            m["episodes/distinct_tasks"].append(float(len(self.tasks_seen)))
        for key, name in (("cost", "cost"), ("quality", "quality"), ("n_routes", "routes")):
            m[f"episode/{name}"].append(sum(float(v or 0.0) for v in fields[key]) / n)
        for key, name in (("pool_errors", "pool_error_rate"), ("format_error", "format_error_rate")):  # share of episodes with any
            m[f"episode/{name}"].append(sum(1 for v in fields[key] if v) / n)
        self._log_signal(m, mode)
        if self.advantage == "grpo" or self._last_rewards_per_func is None:
            return out
        G = self.num_generations if mode == "train" else self.num_generations_eval
        rpf = self._last_rewards_per_func
        rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rpf).all(dim=1)] = torch.nan  # TRL's unscorable episodes: no baseline share, advantage 0
        if self.advantage == "rloo":
            adv = rloo_advantages(rewards, G)
        elif self.advantage == "all_names":
            if self.all_names_episodes == "scripted" and mode == "train":  # no sampler recorded the names' log-probs: a no-grad forward per group gives them
                names = gather_object([inp.get("route_target") for inp in local])
                k = max(int(inp.get("route_candidates") or 0) for inp in local)  # the pool's size, the same on every rank
                if self.all_names_weights_in_loss and names_in_loss.whole_groups(self._loss_row_ranges(out), G, len(local)):  # or the loss's own forward (names_in_loss.py)
                    return self._defer_names(out, rewards, k, m)
                if self.all_names_weights_in_loss:  # a loss forward would split a group: this step runs the names pass (logged as a rate)
                    m["advantage/deferred_to_loss"].append(0.0)
                logps = self.accelerator.gather(self._scripted_name_logps(out)).tolist()
            else:
                names, logps, k = first_routes(gather_object([list(self._last_decisions)]))
            scale = self.args.scale_rewards
            scale = {True: "group", False: "none"}.get(scale, scale) if isinstance(scale, bool) else str(scale)
            adv = all_names_advantages(rewards, G, names, torch.tensor(logps, device=rewards.device), k or G, scale=scale, weights=self.all_names_weights,
                                       temperature=self.all_names_temperature)
            self._log_route_distribution(m, names, logps, G)
            log_decision_rewards(m, rewards.tolist(), names, logps, G)  # the sampled episodes' mean reward is every name's alike here: log the router's own
        else:
            assert self.bopo_reward is not None
            ref, solvable = boundary_reward_refs(self.bopo_reward, fields["task_id"])
            # a success is a right answer in a well-formed episode: BoPO's reward gives a format
            # error -1 whatever the answer, and the success clamp must not shield that
            success = torch.tensor([(q or 0) > 0 and not fe for q, fe in zip(fields["quality"], fields["format_error"])], device=rewards.device)
            adv = bopo_advantages(rewards, G, torch.tensor(ref, device=rewards.device), success, torch.tensor(solvable, device=rewards.device), beta=self.bopo_beta)
        n_local = len(local)
        start = self.accelerator.process_index * n_local
        episode_adv = out["advantages"]  # TRL's GRPO advantages of this process's episodes, scaled as scale_rewards says
        out["advantages"] = adv[start : start + n_local].to(episode_adv.device, episode_adv.dtype)
        if self.advantage == "all_names" and self.all_names_credit == "name":  # the name's tokens take its advantage, the rest the episode's (advantages.py)
            lists = decision_lists if decision_lists is not None else [None] * n_local  # None: no episode decided; name_credit checks the lengths
            out["advantages"] = name_credit(out["advantages"], episode_adv, lists, out["completion_ids"].size(1))
        # TRL logged its own GRPO advantages for these episodes: log the ones actually used
        logged = self._logs["advantages"]
        for i, a in enumerate(adv.tolist()):
            logged[len(logged) - len(adv) + i] = a
        m[f"advantage/{self.advantage}_mean_abs"].append(float(adv.abs().mean()))
        return out


    def _scripted_name_logps(self, out: dict[str, Any]) -> torch.Tensor:
        """Each scripted episode's log p(name) under the router's current weights: the sum of its
        name tokens' log-probs within their allowed sets (the loss's masked positions), one
        group of this process's rows at a time (the loss's pieces under `microbatch_tokens`),
        without gradient. The same function and settings
        as the loss (`policy_logps` at the trainer's temperature), so the weights are the
        probabilities the loss then moves (equal up to bf16 rounding where the loss's
        micro-batch is trimmed to a different width), run only up to the last name column
        (`name_columns`: an anchored row's tail is not run twice). The unwrapped model: under DDP a forward
        of the wrapped one syncs buffers, and the number of these forwards may differ by rank.
        Without the prompt's gradient, each prompt's forward is kept for this optimizer step's
        loss (`_prompt_cache`), which then runs only each prompt's last token and the completions."""
        model = self.accelerator.unwrap_model(self.model)
        if self._prompt_cache is not None:
            self._prompt_cache.reset(tag=self.state.global_step)
        sums = []
        for s, e in self._names_pass_pieces(out):  # at the widths the loss runs (so its kept prompts are found)
            part = microbatch.rows(out, s, e)
            if self.trim_padding:
                part = microbatch.trim_padding(part)
            mask = part["completion_mask"] if "tool_mask" not in part else part["completion_mask"] * part["tool_mask"]
            comp, cmask, allowed = name_columns(part["completion_ids"], part["completion_mask"], mask, part.get("decision_allowed"))
            ids = torch.cat([part["prompt_ids"], comp], 1)
            att = torch.cat([part["prompt_mask"], cmask], 1)
            with torch.no_grad(), self._frozen_casts():
                lp, _ = policy_logps(model, ids, att, comp.size(1), temperature=self.temperature, positions=mask[:, : comp.size(1)].bool(), allowed=allowed,
                                     autocast=self.accelerator.autocast, prompt_grad=self.prompt_gradient, prompt_cache=self._prompt_cache)
            sums.append(lp.sum(dim=1))
        return torch.cat(sums)

    def _loss_row_ranges(self, out: dict[str, Any]) -> list[tuple[int, int]]:
        """The row ranges of this process's generation that the loss will run as one forward each:
        its pieces under `microbatch_tokens`, else TRL's micro-batches."""
        if self.microbatch_tokens is not None:
            return self._names_pass_pieces(out)
        B, mb = out["completion_ids"].size(0), self.args.per_device_train_batch_size
        return [(s, min(s + mb, B)) for s in range(0, B, mb)]

    def _defer_names(self, out: dict[str, Any], rewards: torch.Tensor, k: int, m: Any) -> dict[str, Any]:
        """`algorithm.all_names_weights_in_loss`: hand the loss this process's rewards and route
        targets instead of advantages (names_in_loss.defer); `_weigh_names` computes them from the
        loss's own log-probs. The advantages TRL logged for this generation are replaced by NaN
        until then (filled in by the loss on a single process)."""
        n_local = out["completion_ids"].size(0)
        start = self.accelerator.process_index * n_local
        self._names_k = k
        if self._prompt_cache is not None:  # no names pass keeps prompts this step: drop the last one's
            self._prompt_cache.reset(tag=None)
        out = names_in_loss.defer(out, rewards[start : start + n_local], [inp.get("route_target") for inp in self._last_inputs], self._route_names)
        logged = self._logs["advantages"]
        total = n_local * self.accelerator.num_processes
        for i in range(max(0, len(logged) - total), len(logged)):
            logged[i] = float("nan")
        out["names_row"] = torch.arange(len(logged) - total + start, len(logged) - total + start + n_local, device=out["completion_ids"].device)
        m["advantage/deferred_to_loss"].append(1.0)
        return out

    def _weigh_names(self, inputs: dict[str, Any], logps: torch.Tensor) -> None:
        """The loss forward's mirror advantages from its own log-probs (names_in_loss.py), set in
        `inputs` before TRL's loss reads them; the route distribution, expected reward and mean
        |advantage| logged as the names pass logs them (per forward, this process's rows)."""
        G = self.num_generations
        adv, targets, lps = names_in_loss.piece_advantages(inputs, logps, self._route_names, G=G, K=self._names_k or G, weights=self.all_names_weights,
                                                           temperature=self.all_names_temperature)
        inputs["advantages"] = adv.to(inputs["advantages"].device, inputs["advantages"].dtype)
        self._names_weighed = True
        m = self._metrics["train"]
        self._log_route_distribution(m, targets, lps, G)
        log_decision_rewards(m, inputs[names_in_loss.REWARD].tolist(), targets, lps, G)
        m[f"advantage/{self.advantage}_mean_abs"].append(float(adv.abs().mean()))
        if self.accelerator.num_processes == 1 and "names_row" in inputs:  # the completions table's advantages (TRL's log)
            logged = self._logs["advantages"]
            for r, a in zip(inputs["names_row"].tolist(), adv.tolist()):
                if 0 <= r < len(logged):
                    logged[r] = a

    def _names_pass_pieces(self, out: dict[str, Any]) -> list[tuple[int, int]]:
        """The row ranges the names pass runs: one group at a time (as a one-group loss
        micro-batch runs), or under `microbatch_tokens` each loss micro-batch's own pieces, so
        that each kept prompt is found by the loss at the width it runs."""
        G, B = self.num_generations, out["completion_ids"].size(0)
        if self.microbatch_tokens is None:
            return [(s, min(s + G, B)) for s in range(0, B, G)]
        mb = self.args.per_device_train_batch_size
        return [(m + s, m + e) for m in range(0, B, mb) for s, e in self._pieces(microbatch.rows(out, m, min(m + mb, B)))]


def name_columns(completion_ids: torch.Tensor, completion_mask: torch.Tensor, loss_mask: torch.Tensor, allowed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The completion columns up to the last one the loss reads (`loss_mask`), and their mask
    and allowed sets: what the names pass needs. A causal model's log-prob at a column does not
    depend on later ones, so cutting after the names changes no name's log-prob, and the
    protocol anchor's whole-episode row (the sub-query, the pool's reply, the adoption after
    its name: loss mask 0) is not run a second time without gradient. At least one column."""
    read = loss_mask.bool().any(0).nonzero()
    end = int(read.max()) + 1 if len(read) else 1
    if end >= completion_ids.size(1):
        return completion_ids, completion_mask, allowed
    return completion_ids[:, :end], completion_mask[:, :end], (allowed[:, :end] if allowed is not None else None)


def expected_reward(rewards: list[float], names: list[str | None], logps: list[float], G: int) -> float | None:
    """All-names groups: the router's exact expected reward on the batch's tasks, the mean over
    groups of sum_m pi(m) rbar_m (pi renormalised over the group's names, rbar_m the mean reward
    of name m's episodes); None when no group named a model. What the router would earn
    sampling its names on these tasks, where the batch's mean reward is every name's alike."""
    return decision_rewards(rewards, names, logps, G)[0]


def greedy_reward(rewards: list[float], names: list[str | None], logps: list[float], G: int) -> float | None:
    """All-names groups: the mean over groups of rbar_m for the name of highest probability,
    what the router would earn taking its most likely name on these tasks (evaluation decodes
    greedily token by token, which picks that name unless names sharing a first token split
    its mass; in sampled groups, the likeliest of the names sampled). Each step's tasks are new
    to the router until the training tasks run out, so this is a held-out figure of the greedy
    policy that needs no held-out tasks (progressive validation): what a pilot of a recipe's
    knobs can be read by. None when no group named a model."""
    return decision_rewards(rewards, names, logps, G)[1]


def log_decision_rewards(m: Any, rewards: list[float], names: list[str | None], logps: list[float], G: int) -> None:
    """Append `decision/expected_reward` and `decision/greedy_reward` to the metrics `m` (each
    where some group named a model)."""
    for key, value in zip(("decision/expected_reward", "decision/greedy_reward"), decision_rewards(rewards, names, logps, G)):
        if value is not None:
            m[key].append(value)


def decision_rewards(rewards: list[float], names: list[str | None], logps: list[float], G: int) -> tuple[float | None, float | None]:
    """(`expected_reward`, `greedy_reward`) in one pass over the groups."""
    import math

    expected, greedy = [], []
    for gi in range(len(names) // G):
        per: dict[str, list[float]] = {}
        prob: dict[str, float] = {}
        for n, lp, r in zip(names[gi * G : (gi + 1) * G], logps[gi * G : (gi + 1) * G], rewards[gi * G : (gi + 1) * G]):
            if n is None or lp != lp or r != r:
                continue
            per.setdefault(n, []).append(r)
            prob[n] = math.exp(lp)
        z = sum(prob.values())
        if z > 0:
            expected.append(sum(prob[n] / z * sum(v) / len(v) for n, v in per.items()))
            best = max(prob, key=lambda n: prob[n])
            greedy.append(sum(per[best]) / len(per[best]))
    return (sum(expected) / len(expected) if expected else None, sum(greedy) / len(greedy) if greedy else None)


def first_routes(decisions: list[Any]) -> tuple[list[str | None], list[float], int]:
    """Per episode (its decisions per turn, gathered across ranks): the name its first route
    decision took and that name's log-prob under the name distribution, (None, NaN) when it
    made none; and the number of candidate names (0 when no episode decided)."""
    names: list[str | None] = []
    logps: list[float] = []
    k = 0
    for part in decisions:
        for ep in part:
            d = next((x for t in (ep or []) for x in t if x.get("stem") in ROUTE_STEMS and x.get("logprob") is not None), None)
            names.append(d["choice"] if d else None)
            logps.append(float(d["logprob"]) if d else float("nan"))
            k = max(k, len(d.get("names") or ())) if d else k
    return names, logps, k
