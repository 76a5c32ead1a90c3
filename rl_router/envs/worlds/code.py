"""Small coding tasks checked by running unit tests in a subprocess with a time limit.

A task is a chain of two or three functions, each building on the previous one
(`f2` calls `f1`, `f3` calls `f2`). At each step the acting model writes the current
function; the env runs that function's tests in a fresh `python -I -S` subprocess
(module = every accepted function so far + the candidate), with a wall-clock limit. A
function that passes is accepted and the episode moves on; one that fails shows the
router the first failing assertion and the same function must be tried again, costing a
step and money. The episode succeeds when every function is accepted.

Each function has a difficulty ("easy" / "hard", the step's `topic`); a simulated pool
answers with the reference solution or a plausible bug (an off-by-one constant, a
forgotten empty-list case) by its skill on that topic; a live model writes the code.
"""

from __future__ import annotations

import random
import re
import secrets
import subprocess
import sys
from typing import Any

from rl_router.tasks import Task

from rl_router.envs.worlds import StepOutcome, World, WorldState, last_answer

# (difficulty, spec, reference, plausible bug); {k} {r} {p} are filled per task, {p} = previous function
STEPS: list[dict[str, tuple[str, str, str, str]]] = [
    {
        "add": ("easy", "f1(xs): return a new list with {k} added to every element of the list xs",
                "def f1(xs):\n    return [x + {k} for x in xs]", "def f1(xs):\n    return [x + {k1} for x in xs]"),
        "keep_mod": ("hard", "f1(xs): keep, in order, the elements x of xs with x % {k} == {r}",
                     "def f1(xs):\n    return [x for x in xs if x % {k} == {r}]", "def f1(xs):\n    return [x for x in xs if x % {k1} == {r}]"),
    },
    {
        "sum": ("easy", "f2(xs): return the sum of f1(xs)", "def f2(xs):\n    return sum(f1(xs))", "def f2(xs):\n    return sum(xs)"),
        "spread": ("hard", "f2(xs): return max - min of f1(xs), or 0 when f1(xs) is empty",
                   "def f2(xs):\n    ys = f1(xs)\n    return max(ys) - min(ys) if ys else 0", "def f2(xs):\n    ys = f1(xs)\n    return max(ys) - min(ys)"),
    },
    {
        "scale": ("easy", "f3(xs): return f2(xs) multiplied by {k}", "def f3(xs):\n    return f2(xs) * {k}", "def f3(xs):\n    return f2(xs) * {k1}"),
        "smallest": ("hard", "f3(xs): return f2 of the {k} smallest elements of xs",
                     "def f3(xs):\n    return f2(sorted(xs)[:{k}])", "def f3(xs):\n    return f2(sorted(xs)[-{k}:])"),
    },
]

AGENT_SYSTEM = (
    "You are a Python coding agent. Write only the function asked for, in one ```python fenced "
    "block; earlier functions are already defined and may be called."
)
FENCE_RE = re.compile(r"```(?:python)?\s*\n(.*?)```", re.S)


def extract_code(reply: str) -> str:
    blocks = FENCE_RE.findall(reply)
    return blocks[-1].strip() if blocks else last_answer(reply)


def run_tests(module: str, tests: list[tuple[str, list[int], Any]], *, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Run `fname(xs) == expected` checks on `module` in an isolated subprocess.
    Returns (all passed, first failure or a pass summary). Passing needs exit code 0 *and*
    a per-run nonce printed after the last check, so code that exits early does not pass."""
    nonce = secrets.token_hex(8)
    lines = [module, "", "def _check():"]
    for fname, xs, exp in tests:
        lines.append(f"    _got = {fname}({xs!r})")
        lines.append(f"    assert _got == {exp!r}, f'{fname}({xs!r}) returned {{_got!r}}, expected {exp!r}'")
    lines.append("_check()")
    lines.append(f"print('{nonce}')")
    try:
        p = subprocess.run([sys.executable, "-I", "-S", "-c", "\n".join(lines)], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s:g} s"
    if p.returncode == 0 and nonce in p.stdout:
        return True, f"passed {len(tests)}/{len(tests)} tests"
    err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    if p.returncode == 0 and not err:
        return False, "exited before the tests finished"
    return False, (err[-1][:200] if err else f"exit code {p.returncode}")


class CodeState(WorldState):
    def __init__(self, task: Task):
        m = task.meta
        self.question = task.question
        self.funcs: list[dict[str, Any]] = m["funcs"]
        self.timeout_s = float(m.get("timeout_s", 5.0))
        self.accepted: list[str] = []
        self.last_failure = ""
        self.attempt = 0  # attempts at the current function
        self.i = 0
        self.done = False
        self.success = False

    def describe(self) -> str:
        if self.done:
            return "Done: all functions pass their tests."
        f = self.funcs[self.i]
        return f"Next ({self.i + 1}/{len(self.funcs)}): {f['spec']}."

    def agent_messages(self, hint: str = "") -> list[dict[str, str]]:
        f = self.funcs[self.i]
        have = "\n\n".join(self.accepted) or "(none)"
        user = f"Task: {self.question}\nAlready defined:\n{have}\nWrite {f['spec']}."
        if self.last_failure:
            user += f"\nYour previous attempt failed: {self.last_failure}"
        if hint:
            user += f"\nRouter note: {hint}"
        return [{"role": "system", "content": AGENT_SYSTEM}, {"role": "user", "content": user}]

    def step_context(self) -> dict[str, Any]:
        f = self.funcs[self.i]
        return {"gold": f"```python\n{f['ref']}\n```", "wrong": f"```python\n{f['bug']}\n```", "topic": f["difficulty"], "step": self.i, "attempt": self.attempt}

    def apply(self, reply: str) -> StepOutcome:
        f = self.funcs[self.i]
        code = extract_code(reply)
        name = f"f{self.i + 1}"
        self.attempt += 1
        if not re.search(rf"^def {name}\s*\(", code, re.M):
            self.last_failure = f"no 'def {name}(' in the reply"
            return StepOutcome(f"{name}: {self.last_failure}", False, False)
        module = "\n\n".join(self.accepted + [code])
        ok, msg = run_tests(module, [(name, xs, exp) for xs, exp in f["tests"]], timeout_s=self.timeout_s)
        if not ok:
            self.last_failure = msg
            return StepOutcome(f"{name} failed: {msg}", False, False)
        self.accepted.append(code)
        self.last_failure, self.attempt = "", 0
        self.i += 1
        if self.i >= len(self.funcs):
            self.done = self.success = True
        return StepOutcome(f"{name} {msg}", True, True)

    @property
    def final_answer(self) -> str | None:
        return "pass" if self.success else None


class CodeWorld(World):
    name = "code"

    def start(self, task: Task) -> CodeState:
        return CodeState(task)

    def make_tasks(self, n: int, seed: int = 0, *, min_steps: int = 2, max_steps: int = 3, p_hard: float = 0.35, timeout_s: float = 5.0, **_: Any) -> list[Task]:
        rng = random.Random(f"code-{seed}")
        inputs = [[], [3, 8, 1, 12, 5], [-4, 0, 9, 9, 2, 17], [30, 21, 14, 7], [6]]
        tasks = []
        for j in range(n):
            funcs, ns = [], {}
            for level in STEPS[: rng.randint(min_steps, max_steps)]:
                hard = [k for k, v in level.items() if v[0] == "hard"]
                easy = [k for k, v in level.items() if v[0] == "easy"]
                key = rng.choice(hard if rng.random() < p_hard else easy)
                diff, spec, ref, bug = level[key]
                k = rng.randint(2, 5)
                r = rng.randint(0, k - 1)
                fill = dict(k=k, k1=k + 1, r=r)
                ref, bug, spec = ref.format(**fill), bug.format(**fill), spec.format(**fill)
                exec(ref, ns)  # our own reference code, to compute the expected outputs
                name = spec.split("(")[0]
                tests = [[xs, ns[name](list(xs))] for xs in inputs]
                funcs.append({"name": name, "difficulty": diff, "spec": spec, "ref": ref, "bug": bug, "tests": tests})
            q = "Write these Python functions, each tested before the next: " + "; ".join(f["spec"] for f in funcs) + "."
            topic = "hard" if any(f["difficulty"] == "hard" for f in funcs) else "easy"
            tasks.append(Task(question=q, gold="pass", answer_type="text", dataset="code", topic=topic, task_id=f"code-{seed}-{j}",
                              meta={"world": "code", "funcs": funcs, "timeout_s": timeout_s}))
        return tasks
