"""Arithmetic chains with a calculator tool: early mistakes compound.

A task is a start value and a list of operations ("add 7", "multiply by 13", ...). At each
step the acting model writes the expression for the next operation, the calculator (a
safe AST evaluator, not `eval`) computes it, and the result becomes the value the next
step works on. A wrong expression is executed as written, so one slip poisons every later
step and the task fails at the end: reward arrives only when the chain is done.

Operations come in two difficulties (the step's `topic`): "easy" (add / subtract a small
number) and "hard" (multiply by a two-digit number, remainder modulo a number). A
simulated pool's per-topic skill decides who gets which right; a live model answers the
agent prompt itself.
"""

from __future__ import annotations

import ast
import operator
import random
from typing import Any

from rl_router.tasks import Task

from rl_router.envs.worlds import StepOutcome, World, WorldState, last_answer

OPS = {
    "add": ("easy", "add {k}", "{v} + {k}", operator.add),
    "sub": ("easy", "subtract {k}", "{v} - {k}", operator.sub),
    "mul": ("hard", "multiply by {k}", "{v} * {k}", operator.mul),
    "mod": ("hard", "take the remainder modulo {k}", "{v} % {k}", operator.mod),
}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
MAX_ABS = 10**12

AGENT_SYSTEM = (
    "You are a careful agent with a calculator. For the step asked, write the arithmetic "
    "expression the calculator should evaluate (integers and + - * // % only) and end your "
    "reply with: The answer is <expression>."
)


class CalculatorError(ValueError):
    pass


def calculate(expr: str) -> int:
    """Evaluate an integer expression with + - * // % and parentheses; anything else raises."""
    if len(expr) > 200:
        raise CalculatorError("expression longer than 200 characters")
    try:
        tree = ast.parse(expr.replace("×", "*").replace("−", "-"), mode="eval")
    except SyntaxError:
        raise CalculatorError("not an arithmetic expression") from None

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            x = ev(n.operand)
            return -x if isinstance(n.op, ast.USub) else x
        if isinstance(n, ast.BinOp) and type(n.op) in _BIN:
            a, b = ev(n.left), ev(n.right)
            if isinstance(n.op, (ast.FloorDiv, ast.Mod)) and b == 0:
                raise CalculatorError("division by zero")
            r = _BIN[type(n.op)](a, b)
            if abs(r) > MAX_ABS:
                raise CalculatorError("result too large")
            return r
        raise CalculatorError(f"unsupported element {type(n).__name__}")

    return ev(tree)


def op_text(kind: str, k: int) -> str:
    return OPS[kind][1].format(k=k)


class ArithmeticState(WorldState):
    def __init__(self, task: Task):
        m = task.meta
        self.question = task.question
        self.ops = [(str(kind), int(k)) for kind, k in m["ops"]]
        self.v = int(m["start"])
        self.target = int(m["target"])
        self.i = 0
        self.attempt = 0  # attempts at the current step (a calculator error does not advance)
        self.history: list[str] = []
        self.done = False
        self.success = False

    def _expected(self) -> int:
        kind, k = self.ops[self.i]
        return OPS[kind][3](self.v, k)

    def describe(self) -> str:
        if self.done:
            return f"Done: final value {self.v}."
        kind, k = self.ops[self.i]
        return f"Value {self.v}. Next ({self.i + 1}/{len(self.ops)}): {op_text(kind, k)}."

    def agent_messages(self, hint: str = "") -> list[dict[str, str]]:
        kind, k = self.ops[self.i]
        done = "; ".join(self.history) or "none"
        user = f"Task: {self.question}\nSteps done: {done}\nCurrent value: {self.v}\nDo step {self.i + 1}: {op_text(kind, k)}."
        if hint:
            user += f"\nRouter note: {hint}"
        return [{"role": "system", "content": AGENT_SYSTEM}, {"role": "user", "content": user}]

    def step_context(self) -> dict[str, Any]:
        kind, k = self.ops[self.i]
        fmt = OPS[kind][2]
        return {"gold": fmt.format(v=self.v, k=k), "wrong": fmt.format(v=self.v, k=k + 1), "topic": OPS[kind][0], "step": self.i, "attempt": self.attempt}

    def apply(self, reply: str) -> StepOutcome:
        expr = last_answer(reply)
        try:
            val = calculate(expr)
        except CalculatorError as e:
            self.attempt += 1
            return StepOutcome(f"step {self.i + 1}: calculator error ({e}) on {expr[:60]!r}", False, False)
        correct = val == self._expected()
        self.history.append(f"{expr} = {val}")
        self.v, self.i, self.attempt = val, self.i + 1, 0
        if self.i >= len(self.ops):
            self.done, self.success = True, self.v == self.target
        return StepOutcome(f"step {self.i}: {expr} = {val}", correct, True)

    @property
    def final_answer(self) -> str | None:
        return str(self.v) if self.done else None


class ArithmeticWorld(World):
    name = "arithmetic"

    def start(self, task: Task) -> ArithmeticState:
        return ArithmeticState(task)

    def make_tasks(self, n: int, seed: int = 0, *, min_steps: int = 3, max_steps: int = 3, p_hard: float = 0.35, **_: Any) -> list[Task]:
        """`n` chains of `min_steps..max_steps` operations, each hard with probability `p_hard`."""
        rng = random.Random(f"arithmetic-{seed}")
        tasks = []
        for j in range(n):
            start = rng.randint(10, 99)
            ops = []
            for _ in range(rng.randint(min_steps, max_steps)):
                if rng.random() < p_hard:
                    ops.append(("mul", rng.randint(12, 29)) if rng.random() < 0.5 else ("mod", rng.randint(7, 19)))
                else:
                    ops.append((rng.choice(["add", "sub"]), rng.randint(2, 19)))
            v = start
            for kind, k in ops:
                v = OPS[kind][3](v, k)
            q = f"Start from {start}, then: " + "; ".join(op_text(kind, k) for kind, k in ops) + ". Report the final value."
            topic = "hard" if any(OPS[kind][0] == "hard" for kind, _ in ops) else "easy"
            tasks.append(Task(question=q, gold=str(v), answer_type="number", dataset="arithmetic", topic=topic,
                              task_id=f"arith-{seed}-{j}", meta={"world": "arithmetic", "start": start, "ops": [list(o) for o in ops], "target": v}))
        return tasks
