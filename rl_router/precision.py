"""bf16 autocast for the router's compute: one recipe knob, `model.autocast: bfloat16`.

Why a knob and not a default: on a CPU with native bf16 (AVX512-BF16 or AMX) oneDNN runs bf16
matmuls faster than float32, but the numbers change, so every published figure was measured in
float32 and stays reproducible unless a recipe asks.
Why autocast and not bf16 weights: the master weights, the optimizer state and the loss
reduction stay float32 (a bf16 AdamW update of 1e-5 on a weight of 1 is lost to rounding);
only matmuls and attention run in bf16.

Where it applies, so that the policy trained is the policy sampled and evaluated:
- rollouts and every evaluation (`HFPolicy`: the decoder's forwards run under the context),
- the warm start and the RL loss (TRL's `bf16: true`, which accelerate turns into the same
  autocast on CPU; our shared-prompt log-probs run under `accelerator.autocast`).
The log-probs a rollout records (importance sampling) and the loss's log-probs are then both
bf16 forwards of the same weights.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than float32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def normalize(name: str | None) -> str | None:
    """The recipe's spelling -> "bfloat16" or None ("bf16" accepted; "none"/"float32" = off)."""
    if name is None:
        return None
    n = str(name).strip().lower()
    if n in ("", "none", "null", "false", "float32", "fp32", "off"):
        return None
    if n in ("bf16", "bfloat16"):
        return "bfloat16"
    raise ValueError(n)


def usable(name: str | None, device_type: str = "cpu") -> bool:
    """Whether autocast `name` runs natively here: any CUDA device, or a CPU with native bf16."""
    if normalize(name) is None:
        return False
    return device_type != "cpu" or cpu_has_bf16()


def _fused_attention_possible() -> bool:
    import torch

    return str(torch.backends.cpu.get_cpu_capability()).upper().startswith("AVX512")


_INSTALLED = False


def prepare_attention() -> None:
    """Make sdpa attention work, and fast, under CPU bf16 autocast. rl_router pins ATen's CPU
    kernels to AVX2 (rl_router/__init__.py, for numerics that reproduce across CPUs), and
    PyTorch's fused CPU attention refuses bf16 below AVX512 ("pack_vnni2 is only supported when
    avx512 is supported"); its math fallback materialises every score in bf16 and was no faster
    than float32 on SmolLM2 in a one-off measurement. So under CPU autocast the attention itself
    runs the fused float32 kernel on the bf16-rounded queries, keys and values, while every
    linear layer stays bf16. The wrapper passes straight through whenever CPU autocast is off,
    so installing it (once, on transformers' attention registry) changes nothing for float32
    runs."""
    global _INSTALLED
    if _INSTALLED or _fused_attention_possible():
        return
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    fused = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def sdpa_float32_under_cpu_autocast(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kw: Any) -> Any:
        if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return fused(module, query, key, value, attention_mask, **kw)
        with torch.autocast("cpu", enabled=False):
            out, weights = fused(module, query.float(), key.float(), value.float(), attention_mask, **kw)
        return out.to(torch.bfloat16), weights

    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa_float32_under_cpu_autocast
    _INSTALLED = True


def cache_dtype(dtype: Any) -> Any:
    """The dtype a KV cache should keep keys and values in, given the dtype they are computed
    in: float32 (holding the bf16-rounded values exactly) while CPU attention runs float32
    under autocast (`prepare_attention`), so a decoded token's attention reads the cache as it
    is instead of making a float32 copy of all of it (measured: 7% off a SmolLM2 rollout; keys
    leave rotary embeddings in float32 already, values leave v_proj in bf16); else unchanged.
    The attention's numbers are the same either way."""
    import torch

    if _INSTALLED and dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu"):
        return torch.float32
    return dtype


@contextmanager
def frozen_weights_cast(model: Any, dtype: Any, keep: dict[int, Any] | None = None, skip: tuple[Any, ...] = ()) -> Iterator[None]:
    """Inside, every frozen float32 linear weight (and bias) of `model` is a `dtype` copy made
    once on entry; the originals are back on exit. Why: autocast caches its casts only of
    leaf tensors that require grad, so a frozen weight (LoRA's base layers, a tied output
    layer) is cast again at every forward; in a decode of 48 tokens that is 48 casts of the
    whole model (measured on a SmolLM2 + LoRA rollout of 64 episodes: the largest share of its
    copies; casting once took 18% off its time). The values are exactly the ones autocast
    would produce, so the numerics do not change, whichever weights a concurrent decode (serve)
    happens to read. The original Parameter objects are untouched (a tied embedding keeps
    reading float32), and nothing here may be trained: the copies belong to no optimizer.
    `keep` (a dict the caller holds): copies kept across entries and remade only when their
    original changed in place (its version counter moved), so a trainer whose frozen weights
    never change (LoRA's base) casts them once for the whole run instead of once per forward.
    A write through `.data` (PEFT's merge_adapter) does not move the counter: a caller that
    merges or loads weights in place clears its dict.
    `skip`: modules left as they are (the loss applies the output layer in float32, outside
    autocast: training/logprobs.head_logps)."""
    import torch

    done: dict[int, Any] = {}
    swapped: list[tuple[Any, str, Any]] = []
    try:
        for m in model.modules():
            if not isinstance(m, torch.nn.Linear) or any(m is k for k in skip):
                continue
            for name in ("weight", "bias"):
                p = m._parameters.get(name)
                if p is None or p.requires_grad or p.dtype != torch.float32:
                    continue
                if id(p) not in done:
                    kept = keep.get(id(p)) if keep is not None else None
                    if kept is not None and kept[0] is p and kept[1] == p._version and kept[2].dtype == dtype:
                        done[id(p)] = kept[2]
                    else:
                        done[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
                        if keep is not None:
                            keep[id(p)] = (p, p._version, done[id(p)])
                m._parameters[name] = done[id(p)]
                swapped.append((m, name, p))
        yield
    finally:
        for m, name, p in reversed(swapped):
            m._parameters[name] = p


@contextmanager
def _autocast_with_frozen_casts(model: Any, device_type: str) -> Iterator[None]:
    import torch

    with torch.autocast(device_type=device_type, dtype=torch.bfloat16), frozen_weights_cast(model, torch.bfloat16):
        yield


def autocast_for(model: Any, name: str | None) -> Any:
    """A context manager running `model`'s forwards under bf16 autocast (attention as
    `prepare_attention` arranges, frozen weights cast once on entry: `frozen_weights_cast`), or
    a no-op context when `name` is off or bf16 is not native on the model's device (see
    `usable`). Enter it around a whole decode, not one forward, so the casts are made once."""
    device_type = next(model.parameters()).device.type
    if not usable(name, device_type):
        return nullcontext()
    if device_type == "cpu":
        prepare_attention()
    return _autocast_with_frozen_casts(model, device_type)
