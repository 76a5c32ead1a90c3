"""All-names groups (`algorithm.advantage: all_names`): each group takes every pool model once at
its first route decision, weighted by the router's probability of it, so the route decision's
gradient is the exact expected-reward gradient on each task (training/advantages.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rl_router.rollout.engine import enumerate_targets
from rl_router.tasks import Task
from rl_router.training.advantages import all_names_advantages
from rl_router.training.trainer import first_routes


def _expected_gradient_check(G: int, K: int, seed: int) -> None:
    """For a categorical policy over K names and any rewards, the group's mean of
    A_i grad log pi(m_i) (scale none) equals grad sum_m pi(m) r_m."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.rand(K, generator=g, dtype=torch.float64)
    names = [f"m{k % K}" for k in range(G)]
    idx = [k % K for k in range(G)]
    rewards = r[idx]
    adv = all_names_advantages(rewards, G, names, torch.log_softmax(theta, 0)[idx].detach(), K, scale="none")
    (grad_ours,) = torch.autograd.grad((adv * torch.log_softmax(theta, 0)[idx]).mean(), theta)
    (grad_true,) = torch.autograd.grad((torch.softmax(theta, 0) * r).sum(), theta)
    torch.testing.assert_close(grad_ours, grad_true, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("G,K", [(3, 3), (9, 9), (8, 4)])
def test_all_names_advantages_give_the_exact_expected_reward_gradient(G, K):
    for seed in range(3):
        _expected_gradient_check(G, K, seed)


@pytest.mark.parametrize("G,K", [(3, 3), (8, 4)])
def test_uniform_weights_move_each_logit_by_its_reward_above_the_task_mean(G, K):
    """`weights="uniform"`: A_i = r_i - mean(r), and the group's sum of A_i grad log pi(m_i)
    over a softmax's logits is c * (r - mean(r)) (c = G / K), whatever the probabilities: the
    natural policy gradient's step for a softmax policy."""
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        theta = torch.randn(K, generator=g, dtype=torch.float64, requires_grad=True)
        r = torch.rand(K, generator=g, dtype=torch.float64)
        idx = [k % K for k in range(G)]
        adv = all_names_advantages(r[idx], G, [f"m{i}" for i in idx], torch.log_softmax(theta, 0)[idx].detach(), K, scale="none", weights="uniform")
        torch.testing.assert_close(adv, r[idx] - r.mean())
        (grad,) = torch.autograd.grad((adv * torch.log_softmax(theta, 0)[idx]).sum(), theta)
        torch.testing.assert_close(grad, (G // K) * (r - r.mean()), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="weights"):
        all_names_advantages(r[idx], G, ["m"] * G, torch.zeros(G, dtype=torch.float64), K, weights="sampled")


def test_uniform_weights_leave_the_plateau_the_exact_gradient_stays_on():
    """A router that gives the best model (reward 1.0) p = 0.001 and a good one (0.6) p = 0.98:
    the exact gradient moves the best model's logit by p x its advantage and has not reached it
    after 200 steps (its probability falls); the uniform weights' natural-gradient step reaches it within 60."""
    r = torch.tensor([0.6, 1.0, 0.0], dtype=torch.float64)
    start = torch.log(torch.tensor([0.98, 0.001, 0.019], dtype=torch.float64))

    def train(weights: str, steps: int) -> float:
        theta = start.clone().requires_grad_(True)
        opt = torch.optim.SGD([theta], lr=0.5)
        for _ in range(steps):
            lp = torch.log_softmax(theta, 0)
            adv = all_names_advantages(r, 3, ["a", "b", "c"], lp.detach(), 3, scale="none", weights=weights)
            opt.zero_grad()
            (-(adv * lp).sum()).backward()
            opt.step()
        return float(torch.softmax(theta, 0)[1])

    assert train("policy", 200) < 0.1
    assert train("uniform", 60) > 0.9
    assert train("mirror", 60) > 0.9


@pytest.mark.parametrize("G,K", [(3, 3), (9, 9), (8, 4)])
def test_mirror_weights_move_each_logit_toward_the_kl_regularised_target(G, K):
    """`weights="mirror"`: the target q = pi exp(rbar / eta) / Z over the group's names, and the
    group's sum of A_i grad log pi(m_i) over a softmax's logits is K (q - pi): the cross-entropy
    step toward q, whose size does not shrink with a good model's probability."""
    eta = 0.1
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        theta = torch.randn(K, generator=g, dtype=torch.float64, requires_grad=True)
        r = torch.rand(K, generator=g, dtype=torch.float64)
        idx = [k % K for k in range(G)]
        lp = torch.log_softmax(theta, 0)
        adv = all_names_advantages(r[idx], G, [f"m{i}" for i in idx], lp[idx].detach(), K, weights="mirror", temperature=eta)
        pi = lp.detach().exp()
        q = torch.softmax(lp.detach() + r / eta, 0)
        (grad,) = torch.autograd.grad((adv * lp[idx]).sum(), theta)
        torch.testing.assert_close(grad, K * (q - pi), rtol=1e-9, atol=1e-12)
        # scale does not apply: rewards enter only through r / eta
        again = all_names_advantages(r[idx], G, [f"m{i}" for i in idx], lp[idx].detach(), K, scale="batch", weights="mirror", temperature=eta)
        torch.testing.assert_close(again, adv)
    with pytest.raises(ValueError, match="temperature"):
        all_names_advantages(r[idx], G, [f"m{i}" for i in idx], lp[idx].detach(), K, weights="mirror", temperature=0.0)
    # unscorable (NaN) and unnamed episodes get 0; the rest of the group still has its target
    # (with a single name left, (3, 3), the target is that name and every advantage is 0)
    r2 = r[idx].clone()
    r2[0] = float("nan")
    names = [f"m{i}" for i in idx]
    names[1] = None
    adv2 = all_names_advantages(r2, G, names, lp[idx].detach(), K, weights="mirror", temperature=eta)
    assert float(adv2[0]) == 0.0 and float(adv2[1]) == 0.0
    assert (float(adv2[2:].abs().sum()) > 0) == (len(set(names[2:])) > 1)


def test_mirror_weights_find_the_best_name_where_names_share_first_tokens_and_uniform_does_not():
    """A router that writes a name as tokens: first `ll` or `g`, then after `ll` one of `a`,
    `b`, `c`. ll-a is the best model (reward 1.0), ll-b and ll-c the worst (0.0), g good
    (0.7). Uniform weights give the first token `ll` the summed advantages of its three names
    (0.575 - 0.425 - 0.425 < 0) and drive the router to g for good; the mirror target's
    cross-entropy gives `ll` the target's mass on its names and reaches ll-a. Trained by SGD on
    the token-level log-probs, as TRL's loss trains a router's tokens."""
    r = torch.tensor([1.0, 0.0, 0.0, 0.7], dtype=torch.float64)  # ll-a, ll-b, ll-c, g
    names = ["ll-a", "ll-b", "ll-c", "g"]

    def train(weights: str, steps: int) -> torch.Tensor:
        first = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # ll, g
        second = torch.zeros(3, dtype=torch.float64, requires_grad=True)  # a, b, c after ll
        opt = torch.optim.SGD([first, second], lr=0.5)
        for _ in range(steps):
            f, s = torch.log_softmax(first, 0), torch.log_softmax(second, 0)
            lp = torch.stack([f[0] + s[0], f[0] + s[1], f[0] + s[2], f[1]])  # a name's tokens' log-probs, summed
            adv = all_names_advantages(r, 4, names, lp.detach(), 4, scale="none", weights=weights, temperature=0.1)
            opt.zero_grad()
            (-(adv * lp).sum()).backward()
            opt.step()
        with torch.no_grad():
            f, s = torch.softmax(first, 0), torch.softmax(second, 0)
            return torch.stack([f[0] * s[0], f[0] * s[1], f[0] * s[2], f[1]])

    uniform, mirror = train("uniform", 200), train("mirror", 200)
    assert float(uniform[3]) > 0.95, uniform  # settled on g, the second-best model
    assert float(mirror[0]) > 0.9, mirror  # ll-a, the best


def test_all_names_advantages_are_zero_where_they_should_be_and_scaled_like_grpo():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    lp = torch.log(torch.tensor([0.5, 0.5, 0.9, 0.1], dtype=torch.float64))
    a = all_names_advantages(r, 2, ["a", "b", "a", "b"], lp, 2, scale="none")
    # group 1: b = 0.5; A = 2 * 0.5 * (+-0.5); group 2: every model right: nothing to learn
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64))
    scaled = all_names_advantages(r, 2, ["a", "b", "a", "b"], lp, 2, scale="batch")
    torch.testing.assert_close(scaled, a / (r.std() + 1e-4))
    # an unscorable episode gets 0 and no share of the baseline; one with no route decision is plain
    r2 = torch.tensor([float("nan"), 0.0, 1.0, 0.0], dtype=torch.float64)
    a2 = all_names_advantages(r2, 2, ["a", "b", None, "b"], torch.tensor([0.0, -1.0, float("nan"), math.log(0.5)], dtype=torch.float64), 2, scale="none")
    assert a2[0] == 0.0 and a2[1] == 0.0  # the other sample of its group is its own baseline
    torch.testing.assert_close(a2[2:], torch.tensor([1.0, 2 * 0.5 * (0.0 - 0.0)], dtype=torch.float64))


def test_enumerate_targets_cycles_the_names_within_each_group_also_across_processes():
    assert enumerate_targets(7, ["a", "b", "c"], 3) == ["a", "b", "c", "a", "b", "c", "a"]
    assert enumerate_targets(8, ["a", "b"], 4) == ["a", "b", "a", "b"] * 2
    # groups of 4 over two processes of 6 episodes: the second holds the first group's last two
    both = enumerate_targets(6, list("abcd"), 4, 0) + enumerate_targets(6, list("abcd"), 4, 6)
    assert both == list("abcd") * 3
    # a sibling that never routed does not reweigh the others: c = G / K, not the episodes that routed
    r = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    lp = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64))
    one_missing = all_names_advantages(r, 4, ["a", "b", None, "b"], lp, 2, scale="none")
    w = 0.5 / 2  # p / (G / K)
    base = (w * 1.0) / (3 * w)  # the routed episodes' weighted mean reward
    assert float(one_missing[0]) == pytest.approx(4 * w * (1.0 - base))


@pytest.mark.parametrize("weights", ["policy", "uniform", "mirror"])
def test_a_training_rollout_takes_every_name_and_the_trainer_weighs_by_its_probability(gsm8k_trainer, gsm8k_run, weights):
    """On the GSM8K router (two models, groups of 4): each group's first route decisions take the
    two models in turn, with their log-probs under the name distribution the rollout would have
    sampled (equal to what TRL's loss recomputes at those tokens), and the advantages the
    trainer uses are all_names_advantages of the group's rewards, names and log-probs."""
    import json

    from rl_router.recipe import recipe_from_dict
    from rl_router.task_sources import recipe_pool

    pool_names = recipe_pool(recipe_from_dict(json.loads((gsm8k_run.out / "recipe.json").read_text()))).model_names
    assert len(pool_names) == 2  # read before the trainer exists (building the pool after it left accelerate's state unusable)
    reward = lambda completions, **kw: [float(i % 3 == 0) for i in range(len(completions))]  # noqa: E731
    trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, advantage="all_names", all_names_weights=weights)
    trainer.model.train()
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    names, logps, k = first_routes([trainer._last_decisions])
    assert sorted(set(n for n in names if n)) == sorted(pool_names)
    for gi in range(4):  # each group takes the models in turn
        assert all(n is None or n == pool_names[k % 2] for k, n in enumerate(names[gi * 4 : gi * 4 + 4])), names[gi * 4 : gi * 4 + 4]
    assert sum(n is not None for n in names) >= 12  # the warm-started router routes on most episodes
    assert all(lp <= 0.0 for lp in logps if lp == lp)
    # the loss's log-probs at the decision tokens sum to each decision's recorded log-prob
    allowed = out["decision_allowed"]
    pos = allowed[:, :, 0] >= 0
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    att = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    with torch.no_grad():
        trainer._decision_allowed, trainer._logp_positions = allowed, (out["completion_mask"] * out["tool_mask"]).bool()
        lp = trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, out["completion_ids"].size(1))[0]
        trainer._decision_allowed = trainer._logp_positions = None
    for b, turns in enumerate(trainer._last_decisions):
        want = sum(x["logprob"] for t in turns for x in t)
        assert float(lp[b][pos[b]].sum()) == pytest.approx(want, abs=1e-4)
    rewards = torch.tensor(reward(list(range(16))), dtype=torch.float32)
    assert k == 2
    want = all_names_advantages(rewards, 4, names, torch.tensor(logps), 2, scale=trainer.args.scale_rewards, weights=weights, temperature=trainer.all_names_temperature)
    torch.testing.assert_close(out["advantages"].float(), want.float(), rtol=1e-5, atol=1e-6)
    assert "decision/route_entropy_exact" in trainer._metrics["train"]
    assert not any(k.startswith("decision/route_share/") for k in trainer._metrics["train"])


def test_all_names_training_moves_the_router_toward_the_rewarded_model(gsm8k_trainer):
    """Learning, not bookkeeping: rewarding only episodes that called the model this router
    rarely calls (p about 2e-4), three AdamW steps (the trainer's optimizer) on all-names
    batches raise its log-probability of that model on the tasks. Every group calls that model
    although the router would almost never sample it: sampled GRPO groups of 4 would see it
    about once in 1,000 groups."""
    from rl_router.training.trainer import ROUTE_STEMS

    target = "gpt-4-1106"

    def text(c) -> str:
        return c[0]["content"] if isinstance(c, list) else c

    def reward(completions, **kw):  # the first route's model (this router may escalate after it)
        return [1.0 if text(c).split(ROUTE_STEMS[0], 1)[-1].startswith(f'{target}"') else 0.0 for c in completions]

    trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, advantage="all_names")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    prompts = [{"prompt": t.question} for t in tasks[:4] for _ in range(4)]

    def logp_target() -> float:
        names, logps, k = first_routes([trainer._last_decisions])
        lps = [lp for n, lp in zip(names, logps) if n == target]
        assert lps, names
        return sum(lps) / len(lps)

    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(prompts)
    before = logp_target()
    assert float(out["advantages"].abs().max()) > 0
    opt = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    for step in range(3):
        trainer._compute_loss(trainer.model, out).backward()
        opt.step()
        opt.zero_grad()
        torch.manual_seed(1 + step)
        out = trainer._generate_and_score_completions(prompts)
    after = logp_target()
    assert after > before + 0.5, (before, after)


def test_the_recipe_reaches_the_trainer_with_its_all_names_weights():
    """`algorithm.all_names_weights` is what RouterGRPOTrainer gets (pipeline.trainer_options),
    and a weighting without all-names groups, or an unknown one, is refused with the field."""
    from rl_router.errors import ConfigError
    from rl_router.recipe import load_recipe
    from rl_router.training.pipeline import trainer_options

    sets = ["algorithm.advantage=all_names", "trainer.num_generations=9", "trainer.per_device_train_batch_size=9"]
    uniform = trainer_options(load_recipe("recipes/dcrouter_smollm2.yaml", [*sets, "algorithm.all_names_weights=uniform", "algorithm.trim_padding=true"]))
    assert (uniform["advantage"], uniform["all_names_weights"], uniform["trim_padding"]) == ("all_names", "uniform", True)
    assert trainer_options(load_recipe("recipes/dcrouter_smollm2.yaml", sets))["all_names_weights"] == "policy"
    mirror = trainer_options(load_recipe("recipes/dcrouter_smollm2.yaml", [*sets, "algorithm.all_names_weights=mirror", "algorithm.all_names_temperature=0.05"]))
    assert (mirror["all_names_weights"], mirror["all_names_temperature"]) == ("mirror", 0.05)
    with pytest.raises(ConfigError, match="algorithm.all_names_temperature"):
        load_recipe("recipes/dcrouter_smollm2.yaml", [*sets, "algorithm.all_names_weights=mirror", "algorithm.all_names_temperature=0"])
    with pytest.raises(ConfigError, match="algorithm.all_names_weights"):
        load_recipe("recipes/dcrouter_smollm2.yaml", ["algorithm.all_names_weights=uniform"])
    with pytest.raises(ConfigError, match="unknown 'sampled'"):
        load_recipe("recipes/dcrouter_smollm2.yaml", [*sets, "algorithm.all_names_weights=sampled"])


def test_name_credit_gives_the_name_its_advantage_and_the_rest_the_episodes():
    """`all_names_credit: name`: an episode's tokens up to the end of its first name decision (the
    first run of consecutive decision positions) take the all-names advantage, the rest (the
    protocol after the name, the reply, the adoption) the episode's own; no decision, all its own."""
    from rl_router.training.advantages import first_decision_end, name_credit

    route, adopt = [(5, [1, 2]), (6, [3, 4]), (7, [9])], [(20, [7, 8])]
    assert first_decision_end(route + adopt) == 8
    assert first_decision_end(list(reversed(route + adopt))) == 8  # order of the list does not matter
    assert first_decision_end(adopt) == 21
    assert first_decision_end([]) == first_decision_end(None) == 0
    out = name_credit(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.3, -0.7, 0.1]), [route + adopt, None, [(30, [1, 2])]], 24)
    assert out.shape == (3, 24)
    torch.testing.assert_close(out[0], torch.tensor([2.0] * 8 + [0.3] * 16))
    torch.testing.assert_close(out[1], torch.full((24,), -0.7))
    torch.testing.assert_close(out[2], torch.full((24,), 0.5))  # a decision past the width: the whole row is before its end
    with pytest.raises(ValueError, match="decision lists"):
        name_credit(torch.zeros(2), torch.zeros(2), [None], 4)


def test_the_trainer_splits_all_names_credit_at_the_name_and_its_loss_trains_on_it(gsm8k_trainer):
    """On the GSM8K router with mirror weights and `all_names_credit: name`: each episode's
    advantages are the mirror advantage up to the end of its first route name (read here from
    the loss's allowed sets, not the rollout's lists) and TRL's GRPO advantage of its reward after
    it; the loss takes the (episodes x tokens) advantages, also trimmed, and its gradient reaches
    the router."""
    from rl_router.training.advantages import first_decision_end

    reward = lambda completions, **kw: [float(i % 3 == 0) - 0.5 * float(i % 5 == 0) for i in range(len(completions))]  # noqa: E731
    trainer, tasks = gsm8k_trainer(reward, enumerate_names=True, advantage="all_names", all_names_weights="mirror", all_names_credit="name", trim_padding=True)
    assert trainer.trim_padding  # a rotary router: trimmed micro-batches
    trainer.model.train()
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([{"prompt": t.question} for t in tasks[:4] for _ in range(4)])
    adv = out["advantages"]
    C = out["completion_ids"].size(1)
    assert adv.shape == (16, C)
    names, logps, k = first_routes([trainer._last_decisions])
    rewards = torch.tensor(reward(list(range(16))), dtype=torch.float32)
    mirror = all_names_advantages(rewards, 4, names, torch.tensor(logps), k, weights="mirror", temperature=trainer.all_names_temperature)
    g = rewards.view(-1, 4)
    centred = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    scale = trainer.args.scale_rewards
    std = rewards.std().expand(16) if scale == "batch" else g.std(dim=1).repeat_interleave(4)
    grpo = centred / (std + 1e-4) if scale != "none" else centred
    pos = out["decision_allowed"][:, :, 0] >= 0
    split = 0
    for b in range(16):
        end = first_decision_end([(int(p), [0]) for p in pos[b].nonzero(as_tuple=True)[0]])
        split += 0 < end < C
        torch.testing.assert_close(adv[b, :end], torch.full((end,), float(mirror[b])), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(adv[b, end:], torch.full((C - end,), float(grpo[b])), rtol=1e-4, atol=1e-5)
    assert split >= 12  # most episodes named a model, with tokens after the name
    assert any(float(mirror[b]) != pytest.approx(float(grpo[b]), abs=1e-3) for b in range(16))  # the two advantages differ
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, out)
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(bool(torch.isfinite(x).all()) for x in grads)
    assert sum(float(x.abs().sum()) for x in grads) > 0


def test_the_recipe_reaches_the_trainer_with_its_all_names_credit():
    """`algorithm.all_names_credit` reaches RouterGRPOTrainer; without all-names groups, or unknown, it is refused with the field."""
    from rl_router.errors import ConfigError
    from rl_router.recipe import load_recipe
    from rl_router.training.pipeline import trainer_options

    sets = ["algorithm.advantage=all_names", "trainer.num_generations=9", "trainer.per_device_train_batch_size=9"]
    assert trainer_options(load_recipe("recipes/dcrouter_smollm2.yaml", sets))["all_names_credit"] == "episode"
    assert trainer_options(load_recipe("recipes/dcrouter_smollm2.yaml", [*sets, "algorithm.all_names_credit=name"]))["all_names_credit"] == "name"
    with pytest.raises(ConfigError, match="algorithm.all_names_credit"):
        load_recipe("recipes/dcrouter_smollm2.yaml", ["algorithm.all_names_credit=name"])
    with pytest.raises(ConfigError, match="unknown 'token'"):
        load_recipe("recipes/dcrouter_smollm2.yaml", [*sets, "algorithm.all_names_credit=token"])
