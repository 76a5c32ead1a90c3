"""Answer normalisation and scoring: SQuAD-style EM/F1, numbers, choice codes.

Kept apart from rewards so environments, baselines and evaluation score answers the same
way the reward functions do.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_NUM = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, golds: str | list[str]) -> float:
    golds = [golds] if isinstance(golds, str) else list(golds)
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: str | list[str]) -> float:
    golds = [golds] if isinstance(golds, str) else list(golds)
    best = 0.0
    p = normalize_answer(prediction).split()
    for g in golds:
        t = normalize_answer(g).split()
        common = Counter(p) & Counter(t)
        same = sum(common.values())
        if not p or not t:
            f1 = float(p == t)
        elif same == 0:
            f1 = 0.0
        else:
            prec, rec = same / len(p), same / len(t)
            f1 = 2 * prec * rec / (prec + rec)
        best = max(best, f1)
    return best


def parse_number(text: str) -> float | None:
    """The last number in `text` ($ and thousands separators allowed), or None."""
    found = _NUM.findall(text or "")
    if not found:
        return None
    try:
        return float(found[-1].replace("$", "").replace(",", ""))
    except ValueError:
        return None


def numeric_match(prediction: str, golds: str | list[str]) -> float:
    golds = [golds] if isinstance(golds, str) else list(golds)
    p = parse_number(prediction)
    if p is None:
        return 0.0
    for g in golds:
        gv = parse_number(g)
        if gv is not None and abs(p - gv) <= 1e-6 * max(1.0, abs(gv)):
            return 1.0
    return 0.0


_CHOICE = re.compile(r"^\s*\(?([A-Za-z])\)?(?=[\s.):,]|$)")


def parse_choice(text: str) -> str | None:
    """A multiple-choice letter at the start of `text` ("B", "(b)", "C. True, False"), upper-cased."""
    m = _CHOICE.match(text or "")
    return m.group(1).upper() if m else None


def choice_match(prediction: str, golds: str | list[str]) -> float:
    """Exact letter match. Not SQuAD EM: its normalisation drops "a" as an article, so "A",
    "a" and an empty answer would all equal gold "A"."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    p = parse_choice(prediction)
    return float(p is not None and any(p == parse_choice(g) for g in golds))


def code_match(prediction: str, golds: str | list[str]) -> float:
    """Exact match of an opaque answer code (case-insensitive, surrounding space and a final
    full stop ignored)."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    p = prediction.strip().rstrip(".").strip().lower()
    return float(bool(p) and any(p == g.strip().lower() for g in golds))


def graded_match(prediction: str, golds: str | list[str]) -> float:
    """Partial credit by answer code: `golds` lists "CODE=SCORE" (recorded score-only data with
    fractional scores, see pools/records.py); the answer scores its code's share, else 0."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    p = prediction.strip().rstrip(".").strip().lower()
    best = 0.0
    for g in golds:
        c, _, v = g.rpartition("=")
        if p and p == c.strip().lower():
            try:
                best = max(best, float(v))
            except ValueError:
                continue
    return best


def score_answer(prediction: str | None, gold: str | list[str] | None, answer_type: str = "text") -> float:
    """Quality of one final answer in [0, 1] by the task's answer type.

    `number`: numeric equality of the last number; `choice`: the multiple-choice letter;
    `code`: exact match of an opaque answer code; `graded`: the score of the answer's code
    ("CODE=SCORE" golds); `text`: SQuAD exact match (use `token_f1` for partial credit).
    """
    if prediction is None or gold is None:
        return 0.0
    if answer_type == "graded":
        return graded_match(prediction, gold)
    if answer_type == "number":
        return numeric_match(prediction, gold)
    if answer_type == "choice":
        return choice_match(prediction, gold)
    if answer_type == "code":
        return code_match(prediction, gold)
    return exact_match(prediction, gold)


#: a reply's stated choice: "The answer is (B)", "answer: C", "The answer is none." (MMLU-Pro's
#: phrasing; the last statement counts, as a reader takes the conclusion)
_STATED_CHOICE = re.compile(r"[Aa]nswer(?:\s+is|:)\s*:?\s*\**\(?([A-Z]|none)\b")
_BARE_CHOICE = re.compile(r"^\W*([A-Z])\W*$")


def extract_final_answer(text: str, answer_type: str | None = None) -> str:
    """What a reader would take as a pool reply's final answer.

    Used wherever a reply is adopted (`@NAME`, scripted baselines, recorded grading).
    Multiple-choice tasks (`answer_type="choice"`): the letter of the reply's last "answer is
    (X)" / "answer: X" statement, or a reply that is a bare letter; "" when it states none.
    Otherwise: GSM8K's `#### N`, then "answer is X", then the last number, then the last
    non-empty line.
    """
    if answer_type == "choice":
        found = _STATED_CHOICE.findall(text or "")
        if found:
            return "" if found[-1] == "none" else found[-1]
        m = _BARE_CHOICE.match(text or "")
        return m.group(1) if m else ""
    if "####" in text:
        return text.split("####")[-1].strip().split("\n")[0].strip()
    m = re.findall(r"answer is[:\s]*\$?\s*([^\s.,;]+(?:\.\d+)?)", text, flags=re.IGNORECASE)
    if m:
        return m[-1].strip()
    n = _NUM.findall(text)
    if n:
        return n[-1].replace("$", "").replace(",", "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
