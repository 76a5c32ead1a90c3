"""Secrets never leave the process as text: one redaction for everything rl-router prints or stores.

Why one place: a password in a pool's `base_url` (`http://user:pass@host/v1`) used to reach an
error line, `OUT/recipe.json`, `OUT/final/recipe.json` and `OUT/stages.json`, each written by
its own code. Recipes now refuse credentials in URLs (`find_url_credentials`, checked on every
string of a recipe), and every writer and printer of recipe-derived text passes it through
`redact` / `redact_obj` as well, so a credential that enters another way (a server's error
message quoting a URL, an environment variable's value) is masked too.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

#: `scheme://USERINFO@`: a user name, a token or user:password before the host
URL_CREDS = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s\"'<>]+@")
#: environment variables whose values are always secret when set
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")


def env_secrets(names: Iterable[str] = ()) -> list[str]:
    """The values of the named environment variables (and SECRET_ENV), long enough to be keys."""
    return [v for n in sorted({*SECRET_ENV, *names}) if len(v := os.environ.get(n, "")) >= 8]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with credentials in URLs and the given secret values replaced by ***."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return URL_CREDS.sub(r"\1***@", text)


def redact_obj(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """`redact` applied to every string (keys too) of a JSON-like object; a copy."""
    secrets = list(secrets)
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, dict):
        return {redact_obj(k, secrets) if isinstance(k, str) else k: redact_obj(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, secrets) for v in obj]
    return obj


def find_url_credentials(obj: Any, path: str) -> str | None:
    """The dotted path of the first string in `obj` holding credentials in a URL, or None."""
    stack: list[tuple[Any, str]] = [(obj, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if URL_CREDS.search(node):
                return where
        elif isinstance(node, dict):
            stack.extend((v, f"{where}.{k}") for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))
    return None
