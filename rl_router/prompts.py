"""Prompts the router sees: the protocol and the pool's model cards, as data not prose.

Router-R1 says its router conditions on price, latency and example performance; we put all
three in the system prompt as a table so the router can actually read them.
"""

from __future__ import annotations

from rl_router.pools.base import ModelCard
from rl_router.tasks import Task

PROTOCOL = (
    "You are a router. Solve the user's task by calling models from the pool; you may call "
    "several models, several times, within the budget.\n"
    "Protocol:\n"
    "1. Think first: <think>...</think>\n"
    '2. Call a model: <route model="NAME">sub-query</route>; its reply arrives as '
    "<information>...</information>\n"
    "3. Finish: <answer>final answer only</answer>, or <answer>@NAME</answer> to adopt NAME's final answer"
)


#: the sub-query scripted policies route when they do not restate the task (the pool still
#: receives the task: see `pool_messages`), and the note they pass an agent at each step
SHORT_QUERY = "Solve the task above."
STEP_NOTE = "Do the next step."


def format_card(c: ModelCard) -> str:
    scores = ", ".join(f"{k} {v:.0%}" for k, v in sorted(c.example_scores.items())) or "n/a"
    line = f"- {c.name}: ${c.price_in:g}/${c.price_out:g} per 1M tokens in/out; latency {c.latency_ms:.0f} ms; context {c.context}; example accuracy: {scores}"
    return line + (f"; {c.strengths}" if c.strengths else "")


#: the protocol in the compact style (many models: the cards, not the instructions, must fit)
COMPACT_PROTOCOL = ('Call models with <think>..</think><route model="NAME">query</route>; replies come as <information>. '
                    "Answer <answer>X</answer> or <answer>@NAME</answer> (adopt its answer).")
COMPACT_HEADER = "Models (accuracy %, $/1M tokens in/out):"
#: `card_style: auto` is compact above this many models
COMPACT_ABOVE = 3


def _short_price(x: float) -> str:
    return f"{x:g}".removeprefix("0") if 0 < x < 1 else f"{x:g}"


def format_card_compact(c: ModelCard) -> str:
    """One line per model, `name accuracy in/out`: 10 cards fit in 200 SmolLM2 tokens (a test
    counts them). Accuracy is the mean of the card's example scores (measured on train tasks)."""
    acc = f" {round(100 * sum(c.example_scores.values()) / len(c.example_scores))}" if c.example_scores else " ?"
    return f"{c.name}{acc} {_short_price(c.price_in)}/{_short_price(c.price_out)}"


def card_style(style: str, n_models: int) -> str:
    if style == "auto":
        return "compact" if n_models > COMPACT_ABOVE else "full"
    return style


def system_prompt(cards: list[ModelCard], extra: str = "", style: str = "full") -> str:
    """The router's system prompt: the protocol and a card per pool model. `style`: "full"
    (price, latency, context, accuracy per dataset, strengths: what Router-R1 conditions on),
    "compact" (name, accuracy, prices: for many models), or "auto" (compact above 3 models)."""
    if card_style(style, len(cards)) == "compact":
        pool = "\n".join(format_card_compact(c) for c in cards)
        return f"{COMPACT_PROTOCOL}\n{COMPACT_HEADER}\n{pool}" + (f"\n{extra}" if extra else "")
    pool = "\n".join(format_card(c) for c in cards)
    return f"{PROTOCOL}\nPool:\n{pool}" + (f"\n{extra}" if extra else "")


def user_prompt(task: Task, budget: float | None) -> str:
    b = f"\nBudget: ${budget:.4f}" if budget is not None else ""
    return f"Task: {task.question}{b}"


def initial_messages(task: Task, cards: list[ModelCard], budget: float | None, extra: str = "", style: str = "full") -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_prompt(cards, extra, style)},
        {"role": "user", "content": user_prompt(task, budget)},
    ]


def pool_messages(question: str, query: str) -> list[dict[str, str]]:
    """What a pool model receives for one route: the task, then the router's sub-query.

    Why the task always travels: a router's sub-query often refers to the task rather than
    restating it ("Solve the task above.", "check step 2"), and a live model answers only
    what it is sent. A sub-query that already contains the task is sent as it is; otherwise
    the task comes first, then a blank line, then the sub-query. Every pool type gets the
    same messages, so recorded and simulated pools are held to what a live model could do
    (they refuse a request whose text does not contain the task)."""
    q = query.strip()
    if normalize_space(question) in normalize_space(q):
        return [{"role": "user", "content": q}]
    return [{"role": "user", "content": f"{question}\n\n{q}"}]


def normalize_space(s: str) -> str:
    """Whitespace-folded, lower-cased text: how requests are matched to tasks."""
    return " ".join(s.split()).lower()


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` with the generation prompt (transformers 5 returns a dict)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)
