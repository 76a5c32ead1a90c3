"""Typed schemas (pydantic v2) for the values that cross a boundary into rl-router: pool model
cards, task and step-record rows, chat requests to `serve` and `pool-server`, and a live pool's
replies. Each value is parsed into its schema once, where it enters; code past that point
holds checked values.

Why schemas instead of checks by hand: two rounds of hand-written checks each fixed the cases
they listed and missed as many again (a NaN price rated a model free, `"stream": "false"`
streamed, `n: 3` was ignored). One rule per field type, in one place:

- numbers are finite (NaN / inf refused), in their range, never a bool and never text (YAML 1.2
  reads `1e-1` as a number already, see rl_router/parsing.py);
- unknown keys are refused where a typo would silently mean a default (cards, requests' known
  fields are typed; OpenAI's many optional request fields are accepted and ignored);
- a failure becomes one `ConfigError` naming the field path (`invalid`), which the CLI prints
  as one line and the servers answer with a 400.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator, model_validator

from rl_router.errors import ConfigError

#: a real number: int or float, never bool or text, finite
Number = Union[StrictInt, float]


def _finite(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError("expected a number")
    if not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v!r}")
    return v


class Strict(BaseModel):
    """Unknown keys refused; floats are not coerced from text; values are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---- pool model cards -----------------------------------------------------------------------
class CardSpec(Strict):
    """A pool model's card in a recipe (`pool.models.NAME`): prices USD per 1M tokens."""

    price_in: float = Field(ge=0)
    price_out: float = Field(ge=0)
    latency_ms: float = Field(0.0, ge=0)
    context: StrictInt = Field(8192, ge=1)
    strengths: StrictStr = ""
    example_scores: dict[StrictStr, float] = Field(default_factory=dict)

    @field_validator("price_in", "price_out", "latency_ms", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return float(_finite(v))

    @field_validator("example_scores", mode="before")
    @classmethod
    def _scores(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("expected a mapping of topic -> score in [0, 1]")
        for k, s in v.items():
            _finite(s)
            if not 0 <= s <= 1:
                raise ValueError(f"{k}: expected a score in [0, 1], got {s!r}")
        return {k: float(s) for k, s in v.items()}


class OpenAICardSpec(CardSpec):
    base_url: StrictStr
    model_id: Optional[StrictStr] = None
    api_key_env: Optional[StrictStr] = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) URL: {v!r} (e.g. http://127.0.0.1:8000/v1)")
        return v


class RecordedCardSpec(CardSpec):
    """A recorded pool's card: prices default to 0 (the recordings carry the costs)."""

    price_in: float = Field(0.0, ge=0)
    price_out: float = Field(0.0, ge=0)
    column: Optional[StrictStr] = None


class LocalCardSpec(CardSpec):
    """An in-process model's card: free unless priced."""

    price_in: float = Field(0.0, ge=0)
    price_out: float = Field(0.0, ge=0)
    path: StrictStr
    tokenizer: Optional[StrictStr] = None
    device: StrictStr = "cpu"
    dtype: Optional[StrictStr] = None


class SimCardSpec(Strict):
    price_in: float = Field(ge=0)
    price_out: float = Field(ge=0)
    latency_ms: float = Field(0.0, ge=0)
    skills: dict[StrictStr, float] = Field(default_factory=dict)
    default_skill: float = Field(0.5, ge=0, le=1)
    answer_tokens: StrictInt = Field(40, ge=1)
    strengths: StrictStr = ""

    @field_validator("price_in", "price_out", "latency_ms", "default_skill", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return float(_finite(v))

    @field_validator("skills", mode="before")
    @classmethod
    def _skills(cls, v: Any) -> Any:
        return CardSpec._scores(v)


# ---- rows of data files ---------------------------------------------------------------------
class TaskRow(BaseModel):
    """One line of a task file (`data.source: FILE.jsonl`); other keys are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    question: StrictStr = Field(min_length=1)
    gold: Union[StrictStr, list[StrictStr], None] = None
    answer_type: Literal["text", "number", "choice", "code", "graded"] = "text"
    dataset: StrictStr = "custom"
    topic: StrictStr = "general"
    task_id: StrictStr = ""

    @field_validator("gold", mode="before")
    @classmethod
    def _gold(cls, v: Any) -> Any:
        def text(x: Any) -> Any:  # a numeric answer written as a JSON number
            return str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else x

        return [text(x) for x in v] if isinstance(v, list) else text(v)


class TierOutcome(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    cost: float = Field(ge=0)
    correct: Optional[StrictBool] = None

    @field_validator("cost", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return float(_finite(v))


class ChatMessageRow(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: StrictStr
    content: StrictStr


class StepRow(BaseModel):
    """One line of a step-level file (rl_router/evaluation/steplog.py)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    task_id: StrictStr
    step: StrictInt = Field(ge=0)
    messages: list[ChatMessageRow] = Field(min_length=1)
    completion: StrictStr
    tiers: dict[StrictStr, TierOutcome] = Field(min_length=1)
    target: StrictStr
    attempt: StrictInt = Field(0, ge=0)
    world: StrictStr = ""
    source: StrictStr = ""
    meta: dict[StrictStr, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _target_is_a_tier(self) -> "StepRow":
        if self.target not in self.tiers:
            raise ValueError(f"target {self.target!r} is not one of its tiers {sorted(self.tiers)}")
        return self


# ---- chat requests (serve, pool-server) -----------------------------------------------------
class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: StrictStr
    text: Optional[StrictStr] = None


class ChatMessage(BaseModel):
    """OpenAI's chat message: content is text, a list of content parts, or null."""

    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[StrictStr, list[TextPart], None] = None
    name: Optional[StrictStr] = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """OpenAI's chat completion request, as far as rl-router's servers act on it: every field
    they read is typed; `n` other than 1 is refused (one answer per request); OpenAI's other
    optional fields (user, seed, stop, ...) are accepted and ignored, as vLLM does."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: Optional[StrictStr] = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: Optional[Number] = None
    top_p: Optional[Number] = None
    max_tokens: Optional[StrictInt] = Field(None, ge=1)
    max_completion_tokens: Optional[StrictInt] = Field(None, ge=1)
    n: Optional[StrictInt] = None
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    rl_router_context: Optional[dict[StrictStr, Any]] = None

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: Any) -> Any:
        if v is not None and not (math.isfinite(v) and 0 <= v <= 2):
            raise ValueError(f"must be a number in [0, 2], got {v!r}")
        return v

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: Any) -> Any:
        if v is not None and not (math.isfinite(v) and 0 < v <= 1):
            raise ValueError(f"must be a number in (0, 1], got {v!r}")
        return v

    @field_validator("n")
    @classmethod
    def _n(cls, v: Any) -> Any:
        if v is not None and v != 1:
            raise ValueError(f"only n: 1 is supported (one answer per request), got {v!r}")
        return v


# ---- a live pool's reply --------------------------------------------------------------------
class ReplyMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    content: Union[StrictStr, list[Union[StrictStr, TextPart]], None] = None


class ReplyChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: ReplyMessage


class ChatReply(BaseModel):
    """The part of an OpenAI-compatible reply a pool reads: the first choice's content. Usage
    counts are read leniently (rl_router.pools.openai_pool.token_count: ours where the
    server's are not usable), so they are not typed here."""

    model_config = ConfigDict(extra="allow")
    choices: list[ReplyChoice] = Field(min_length=1)
    usage: Any = None


# ---- one error for all of them --------------------------------------------------------------
def _loc(path: str, loc: tuple[Any, ...], sep: str = ".") -> str:
    out, first = path, True
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "list[union[str,TextPart]]", "int", "float", "constrained-int", "none", "function-before[_finite()]"):
            continue  # pydantic names the union arm it tried; the field is what a user knows
        else:
            out += (sep if first else ".") + str(part) if out else str(part)
            first = False
    return out


def _problem(err: dict[str, Any]) -> str:
    t, got = err["type"], err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    if t == "missing":
        return "is required"
    if t == "extra_forbidden":
        return "unknown key"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if t in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected an object (a mapping of fields), got {type(got).__name__} {shown}"
    if t in ("float_type", "int_type", "bool_type", "string_type", "dict_type", "list_type", "model_type", "model_attributes_type", "int_from_float", "literal_error") or t.endswith("_type"):
        got_s = type(got).__name__ if isinstance(got, (dict, list)) else f"{type(got).__name__} {shown}"
        return f"{msg[0].lower() + msg[1:] if msg else 'wrong type'}, got {got_s}"
    return f"{msg[0].lower() + msg[1:] if msg else t}" + ("" if shown in msg or isinstance(got, (dict, list)) else f", got {shown}")


def invalid(e: ValidationError, path: str, model: type[BaseModel] | None = None, fix: str = "", sep: str = ".") -> ConfigError:
    """The first error of a pydantic validation as one ConfigError naming the field path (`sep`
    joins `path` and the first field: "." in a recipe, ": " after a file:line); an unknown key
    gets the closest known one as its fix."""
    err = e.errors(include_url=False)[0]
    where = _loc(path, err["loc"], sep)
    problem = _problem(err)
    if err["type"] == "extra_forbidden" and model is not None:
        known = list(model.model_fields)
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"allowed keys: {sorted(known)}"
    return ConfigError(where, problem, fix)


def parse(model: type[BaseModel], data: Any, path: str, fix: str = "", *, sep: str = ".") -> Any:
    """`data` as a `model`, or the ConfigError of `invalid`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise invalid(e, path, model, fix, sep) from None
    except RecursionError:
        raise ConfigError(path, "is nested too deeply", fix or "flatten it") from None


def parse_chat_request(raw: bytes) -> tuple[dict[str, Any], ChatRequest]:
    """A chat request body as (the JSON object, its typed view), or a ConfigError for a 400:
    not JSON, nested too deep, NaN / Infinity, a key twice, text that is not valid Unicode
    (a lone surrogate such as "\\ud800"), or a field of the wrong type."""
    from rl_router.parsing import parse_json

    body = parse_json(raw or b"{}", "body", unique_keys=True, allow_nan=False, fix="send a JSON object with OpenAI's chat fields")
    if not isinstance(body, dict):
        raise ConfigError("body", f"must be a JSON object, got {type(body).__name__}", "send {\"model\": ..., \"messages\": [...]}")
    try:
        import json

        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError("body", f"holds text that is not valid Unicode ({e.reason}: {e.object[e.start:e.end]!r})", "send UTF-8 text; a lone surrogate escape such as \\ud800 is not a character") from None
    return body, parse(ChatRequest, body, "")


def message_text(content: Any) -> str:
    """A typed message's content as text: a string, the text parts joined, or '' (null)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.text for p in content if isinstance(p, TextPart) and p.type == "text" and p.text is not None)
    return ""
