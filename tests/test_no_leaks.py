"""Recorded and simulated pools must not leak the verdict through the form of a reply.

A real model's reply to an MMLU question is a letter; whether it is right cannot be read
from the letter alone. Our replays of correctness-only data must keep that property: a
classifier that sees only the reply text (character n-grams, length) is at chance on
whether the reply is correct.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from rl_router.aio import run_sync
from rl_router.pools import RecordedPool
from rl_router.task_sources import synthetic_tasks
from rl_router.task_sources import recipe_pool, recipe_tasks

from conftest import make_sim_pool


def _grams(text: str) -> Counter:
    t = f"^{text}$"
    return Counter([f"len={len(text)}"] + [t[i : i + n] for n in (1, 2, 3) for i in range(len(t) - n + 1)])


def reply_auc(replies: list[tuple[str, bool]], seed: int = 0, pairs: int = 1) -> float:
    """ROC-AUC of a multinomial naive Bayes over character 1-3-grams and the reply length,
    fitted on half the tasks and scored on the other half. `replies` come in runs of `pairs`
    per task (one per model), kept on the same side: the test is about the form of a reply,
    not about recognising another model's correct answer to the same task."""
    groups = [replies[i : i + pairs] for i in range(0, len(replies), pairs)]
    random.Random(seed).shuffle(groups)
    half = len(groups) // 2
    train, test = [r for g in groups[:half] for r in g], [r for g in groups[half:] for r in g]
    counts = {True: Counter(), False: Counter()}
    for text, ok in train:
        counts[ok].update(_grams(text))
    vocab = set(counts[True]) | set(counts[False])
    tot = {k: sum(c.values()) + len(vocab) for k, c in counts.items()}

    def score(text: str) -> float:
        return sum(n * (math.log((counts[True][g] + 1) / tot[True]) - math.log((counts[False][g] + 1) / tot[False])) for g, n in _grams(text).items())

    scored = [(score(t), ok) for t, ok in test]
    pos = [s for s, ok in scored if ok]
    neg = [s for s, ok in scored if not ok]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_recorded_correctness_only_replies_do_not_show_the_verdict():
    pool = RecordedPool.packaged(["mmlu"])
    tasks = pool.tasks()[::4]  # 3k tasks x 2 models: the AUC's standard error is about 0.01
    replies = [(a.response, a.correct) for t in tasks for a in pool.recorded(t.task_id).answers.values()]
    assert 0.3 < sum(ok for _, ok in replies) / len(replies) < 0.9  # both verdicts are common
    auc = reply_auc(replies, pairs=2)
    assert abs(auc - 0.5) < 0.04, auc
    # the same form for both verdicts: one letter among the question's choices
    assert {len(r) for r, _ in replies} == {len("The answer is A.")}
    # and the scoring still sees the verdict: the gold letter is the correct models' reply
    for t in tasks[:200]:
        for a in pool.recorded(t.task_id).answers.values():
            assert (a.response == f"The answer is {t.gold}.") == a.correct


def test_the_leak_detector_detects_a_leak():
    """Control: the same classifier finds a one-character prefix leak (the form replies had
    before), so the test above can fail."""
    rng = random.Random(0)
    leaky = [((("c" if ok else "w") + f"{rng.getrandbits(24):06x}"), ok) for ok in (rng.random() < 0.7 for _ in range(2000))]
    assert reply_auc(leaky) > 0.95


def test_simulated_replies_do_not_show_the_verdict():
    pool = make_sim_pool()
    tasks = synthetic_tasks(600, ["easy", "hard"], seed=0)
    replies = []
    for t in tasks:
        for m in ("small", "large"):
            c = run_sync(pool.complete(m, [{"role": "user", "content": t.question}], context=t.context()))
            replies.append((c.text, c.text.endswith(f" {t.gold}.")))
    assert 0.3 < sum(ok for _, ok in replies) / len(replies) < 0.9
    assert abs(reply_auc(replies, pairs=2) - 0.5) < 0.06
    assert len({len(r) for r, _ in replies}) == 1


def test_model_cards_are_measured_on_train_rows_only():
    """The router reads each model's example accuracy in its prompt: it must come from the
    train split, never from the held-out tasks it is evaluated on."""
    from rl_router.recipe import load_recipe

    r = load_recipe(None, ["data.max_heldout=10"])
    pool = recipe_pool(r)
    train, held = recipe_tasks(r, pool)
    all_rows = RecordedPool.packaged(["gsm8k"])
    from rl_router.tasks import split_tasks

    full_train, full_held = split_tasks(all_rows.tasks("gsm8k"), r.data.heldout_fraction, r.data.seed)
    assert {t.task_id for t in held} <= {t.task_id for t in full_held}
    for card in pool.models:
        on_train = sum(all_rows.recorded(t.task_id).answers[card.name].correct for t in full_train) / len(full_train)
        on_all = all_rows.card(card.name).example_scores["gsm8k"]
        assert card.example_scores["gsm8k"] == round(on_train, 3)
        assert card.example_scores["gsm8k"] != on_all  # it differs: the test can tell the two apart
