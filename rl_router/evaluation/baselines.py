"""The simple choices a trained router must beat, fitted on train tasks only.

Single-shot baselines choose one model per task; the outcome of that choice on a task is the
always-<model> episode of the task, so their figures are assembled from the always-<model>
episodes (`Evaluator.assemble`): the same env, tokenizer and budget, and every pool call made
once. Which model each one picks comes from the train tasks' outcome table (`OutcomeTable`):

- `oracle`: per task, the cheapest model with the best score (a ceiling no router can pass);
- `random`: a model drawn per task by a hash of (seed, task id);
- `per-category`: per topic (an MMLU-Pro subject, a dcrouter task type), the model with the
  best train score, ties to the cheaper; swept over lambda (score - lambda * cost) into a curve;
  a topic the train split never saw gets the best model overall;
- `knn` (RouteLLM / LLMRouter's kNN router): TF-IDF over the task text, the 10 nearest train
  tasks predict every model's score and cost (similarity-weighted means), and the router picks
  argmax(predicted score - lambda * predicted cost); swept over lambda into a curve;
- `agreement cascade` (datasets with reply text, three or more models): call two cheap models,
  accept the answer they agree on, else call the best model and adopt its answer; the pair is
  the one whose cascade lies furthest above the single-model hull on the train tasks. It is
  multi-call, so it runs through the env (with max_turns raised to 4 if the recipe allows
  fewer: a hand rule, not bound by the router's turn limit).

lambda is in units of quality per (cost / cost of the best train model), so one grid serves
any prices: 0 is quality-greedy, large values pick the cheapest model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rl_router.answers import score_answer
from rl_router.evaluation.knn_router import TfidfKNN
from rl_router.frontier import hull, interp
from rl_router.prompts import SHORT_QUERY, pool_messages
from rl_router.rollout.policies import ScriptedPolicy, adopt_text, route_text, text_turns
from rl_router.tasks import Task

LAMBDAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 1e3)


@dataclass
class OutcomeTable:
    """Every model's outcome on every task: `score[i, m]`, `cost[i, m]` (USD) and the reply's
    final answer `final[i][m]` (for agreement)."""

    tasks: list[Task]
    models: list[str]
    score: np.ndarray
    cost: np.ndarray
    final: list[dict[str, str]]

    def best_model(self) -> str:
        """Highest mean score, ties to the cheaper."""
        q, c = self.score.mean(axis=0), self.cost.mean(axis=0)
        return self.models[min(range(len(self.models)), key=lambda j: (-round(q[j], 12), c[j]))]

    def points(self) -> dict[str, tuple[float, float]]:
        return {m: (float(self.cost[:, j].mean()), float(self.score[:, j].mean())) for j, m in enumerate(self.models)}


def table_from_episodes(tasks: list[Task], episodes: dict[str, list[dict[str, Any]]]) -> OutcomeTable:
    """From always-<model> episodes (`episodes[model][i]` on `tasks[i]`)."""
    models = list(episodes)
    score = np.array([[float(episodes[m][i].get("quality") or 0.0) for m in models] for i in range(len(tasks))]).reshape(len(tasks), len(models))
    cost = np.array([[float(episodes[m][i].get("cost") or 0.0) for m in models] for i in range(len(tasks))]).reshape(len(tasks), len(models))
    final = [{m: str(episodes[m][i].get("answer") or "") for m in models} for i in range(len(tasks))]
    return OutcomeTable(tasks, models, score, cost, final)


def table_from_records(pool: Any, tasks: list[Task]) -> OutcomeTable:
    """For a recorded pool, exactly what always-<model> episodes would give (the scripted call
    bills `pool_messages(task, SHORT_QUERY)`; a test checks the two agree), with no episodes run."""
    from rl_router.answers import extract_final_answer

    models = pool.model_names
    score = np.zeros((len(tasks), len(models)))
    cost = np.zeros((len(tasks), len(models)))
    final = []
    for i, t in enumerate(tasks):
        rec = pool.recorded(t.task_id)
        msgs = pool_messages(t.question, SHORT_QUERY)
        row = {}
        for j, m in enumerate(models):
            a = rec.answers[m]
            score[i, j] = a.score
            cost[i, j] = pool.estimate_cost(m, msgs, max_tokens=0, context=t.context())
            row[m] = extract_final_answer(a.response, t.answer_type)
        final.append(row)
    return OutcomeTable(tasks, models, score, cost, final)


def reward_table(table: OutcomeTable, reward_specs: list[dict[str, Any]]) -> np.ndarray:
    """`[i, m]`: the recipe's weighted reward for task i had the router called model m once and
    adopted its answer, by the recipe's own reward functions (percentile cost rewards scored
    against every cost in the table). What `per_topic_choices` maximises, so a warm start
    aims at the trade-off RL then trains, not at accuracy alone."""
    from rl_router.rewards import build_rewards

    n = len(table.tasks)
    funcs, weights = build_rewards(reward_specs, cost_reference=table.cost.reshape(-1).tolist())
    rows = [t.to_row() for t in table.tasks]
    base = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
    out = np.zeros(table.score.shape)
    for m, name in enumerate(table.models):
        kw = {**base, "answer": [table.final[i].get(name) for i in range(n)], "cost": table.cost[:, m].tolist(), "quality": table.score[:, m].tolist(),
              "format_error": [None] * n, "over_budget": [0] * n, "n_routes": [1] * n, "split": ["eval"] * n}
        for f, w in zip(funcs, weights):
            out[:, m] += w * np.asarray(f(prompts=[t.question for t in table.tasks], completions=[""] * n, completion_ids=[[]] * n, **kw), dtype=float)
    return out


def per_topic_choices(table: OutcomeTable, value: np.ndarray, held: list[Task]) -> dict[str, str]:
    """Task id -> model: each topic's model with the highest mean `value` (e.g. reward_table)
    on the table's tasks of that topic, ties to the cheaper; topics it never saw get the best
    model overall."""
    cost = table.cost.mean(axis=0)

    def best(rows: list[int]) -> str:
        v = value[rows].mean(axis=0)
        return table.models[min(range(len(table.models)), key=lambda j: (-round(float(v[j]), 12), cost[j]))]

    by_topic: dict[str, list[int]] = {}
    for i, t in enumerate(table.tasks):
        by_topic.setdefault(t.topic, []).append(i)
    pick = {topic: best(rows) for topic, rows in by_topic.items()}
    overall = best(list(range(len(table.tasks))))
    return {t.task_id: pick.get(t.topic, overall) for t in held}


# ---- single-shot choosers ---------------------------------------------------------------------
def oracle_choice(table: OutcomeTable) -> dict[str, str]:
    """Per task the cheapest model with the best score (ties: cheaper first)."""
    out = {}
    for i, t in enumerate(table.tasks):
        j = min(range(len(table.models)), key=lambda j: (-table.score[i, j], table.cost[i, j], j))
        out[t.task_id] = table.models[j]
    return out


def _rel(cost: np.ndarray, ref: float) -> np.ndarray:
    return cost / ref if ref > 0 else cost


def per_category_choices(train: OutcomeTable, held: list[Task], lambdas: Sequence[float] = LAMBDAS) -> list[tuple[float, dict[str, str]]]:
    """(lambda, task id -> model) for each lambda: per topic, argmax of train mean score -
    lambda * mean cost / the best model's mean cost."""
    best = train.best_model()
    ref = float(train.cost[:, train.models.index(best)].mean())
    by_topic: dict[str, list[int]] = {}
    for i, t in enumerate(train.tasks):
        by_topic.setdefault(t.topic, []).append(i)
    out = []
    for lam in lambdas:
        pick: dict[str, str] = {}
        for topic, rows in by_topic.items():
            q, c = train.score[rows].mean(axis=0), _rel(train.cost[rows].mean(axis=0), ref)
            pick[topic] = train.models[int(np.argmax(q - lam * c - 1e-12 * c))]
        q, c = train.score.mean(axis=0), _rel(train.cost.mean(axis=0), ref)
        overall = train.models[int(np.argmax(q - lam * c - 1e-12 * c))]
        out.append((lam, {t.task_id: pick.get(t.topic, overall) for t in held}))
    return out


def knn_lambda(train: OutcomeTable, lambdas: Sequence[float] = LAMBDAS) -> float:
    """The kNN row's lambda: the one nearest the train hull's slope (from the cheapest to the
    best single model, cost relative to the best's), where a predicted gain pays for its cost."""
    pts = train.points()
    best, cheapest = train.best_model(), min(pts, key=lambda m: pts[m][0])
    span = (pts[best][0] - pts[cheapest][0]) / pts[best][0] if pts[best][0] > 0 else 1.0
    slope = (pts[best][1] - pts[cheapest][1]) / span if span > 0 else 0.0
    return min(lambdas, key=lambda x: abs(x - slope))


def knn_choices(train: OutcomeTable, held: list[Task], lambdas: Sequence[float] = LAMBDAS, k: int = 10) -> list[tuple[float, dict[str, str]]]:
    """(lambda, task id -> model): TF-IDF kNN predicts each model's score and cost."""
    best = train.best_model()
    ref = float(train.cost[:, train.models.index(best)].mean())
    knn = TfidfKNN(k=k).fit([t.question for t in train.tasks], np.hstack([train.score, _rel(train.cost, ref)]))
    pred = knn.predict([t.question for t in held])
    n = len(train.models)
    q, c = pred[:, :n], pred[:, n:]
    out = []
    for lam in lambdas:
        pick = np.argmax(q - lam * c - 1e-12 * c, axis=1)
        out.append((lam, {t.task_id: train.models[int(j)] for t, j in zip(held, pick)}))
    return out


# ---- the agreement cascade ---------------------------------------------------------------------
def same_answer(a: str, b: str, answer_type: str) -> bool:
    """Do two replies' final answers agree (by the task's grading rule; empty never agrees)?"""
    return bool(a) and bool(b) and score_answer(a, b if answer_type != "graded" else f"{b}=1", answer_type) >= 1.0


def cascade_outcomes(table: OutcomeTable, a: str, b: str, strong: str) -> tuple[np.ndarray, np.ndarray]:
    """Per task (score, cost) of the cascade a, b -> strong on an outcome table."""
    ja, jb, js = (table.models.index(x) for x in (a, b, strong))
    score, cost = np.zeros(len(table.tasks)), np.zeros(len(table.tasks))
    for i, t in enumerate(table.tasks):
        cost[i] = table.cost[i, ja] + table.cost[i, jb]
        if same_answer(table.final[i][a], table.final[i][b], t.answer_type):
            score[i] = table.score[i, ja]
        else:
            cost[i] += table.cost[i, js]
            score[i] = table.score[i, js]
    return score, cost


def fit_cascade(train: OutcomeTable) -> tuple[str, str, str, dict[str, Any]]:
    """(a, b, strong, fit): strong = the best train model; (a, b) the pair of other models whose
    cascade lies furthest above the train single-model hull at its cost."""
    strong = train.best_model()
    h = hull(list(train.points().values()))
    best: tuple[float, str, str, float, float] | None = None
    others = [m for m in train.models if m != strong]
    for a, b in itertools.combinations(others, 2):
        s, c = cascade_outcomes(train, a, b, strong)
        gain = float(s.mean()) - interp(h, float(c.mean()))
        if best is None or gain > best[0] + 1e-12:
            first, second = sorted((a, b), key=lambda m: train.cost[:, train.models.index(m)].mean())
            best = (gain, first, second, float(s.mean()), float(c.mean()))
    assert best is not None
    return best[1], best[2], strong, {"train_above_hull": best[0], "train_quality": best[3], "train_mean_cost": best[4]}


class AgreementCascadePolicy(ScriptedPolicy):
    """Route to `a`, then `b`; if their final answers agree adopt `a`'s, else route to `strong`
    and adopt its answer. Scripted turns in the shape the router is warm-started on."""

    def __init__(self, tokenizer: Any, a: str, b: str, strong: str):
        super().__init__(tokenizer, lambda _t: a, name=f"cascade {a}+{b}->{strong}", query="short", adopt=True)
        self.a, self.b, self.strong = a, b, strong

    def _text(self, s: Any) -> str:
        from rl_router.answers import extract_final_answer

        k = len(s.policy_turns)
        if k == 0:
            return route_text(self.a, SHORT_QUERY, s.env)
        if k == 1:
            return route_text(self.b, SHORT_QUERY, s.env)
        replies = getattr(getattr(s.env, "inner", s.env), "replies", {})
        if k == 2:
            fa = extract_final_answer(replies.get(self.a, ""), s.task.answer_type)
            fb = extract_final_answer(replies.get(self.b, ""), s.task.answer_type)
            if self.a in replies and self.b in replies and same_answer(fa, fb, s.task.answer_type):
                return adopt_text(self.a, s.env)
            return route_text(self.strong, SHORT_QUERY, s.env)
        return adopt_text(self.strong if self.strong in replies else self.a, s.env)

    def act(self, states: list[Any]) -> list[Any]:
        return text_turns(self.tokenizer, [self._text(s) for s in states])


def has_reply_text(pool: Any, tasks: list[Task]) -> bool:
    """Whether replies are real text (not made up from scores), so agreement means something."""
    made_up = getattr(pool, "made_up_replies", None)
    if made_up is None:
        return True  # live pools answer for real
    return not any(t.dataset in made_up for t in tasks)

