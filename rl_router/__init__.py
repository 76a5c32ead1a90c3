"""rl-router: train small LLMs to route tasks across a pool of LLMs under a budget, with RL on TRL.

Importing the package pins CPU numerics to a portable profile (see `_portable_cpu_numerics`)
before torch loads, so that the same seed gives the same numbers across the machines it fixes
(not all: README's quickstart section shows an Intel Xeon with AMX and an AMD EPYC without it
still printing different figures).
"""

from __future__ import annotations

import os
import platform


def _portable_cpu_numerics() -> None:
    """Make CPU results the same across x86-64 machines with AVX2 where the kernels below decide
    the summation order (not every pair: an Intel Xeon with AMX and an AMD EPYC without it still
    run the quickstart to different figures, README).

    Why: torch's CPU kernels and MKL's GEMM pick their instruction set (AVX2, AVX512, ...) per
    machine and sum floats in different orders, so the same seed trained on an AVX512 EPYC and
    on an AVX2 laptop drifts apart, enough to move a small router across the random line. Pinning
    ATen's kernels to AVX2 and MKL to its AVX2 code path in strict conditional-reproducibility
    mode (MKL_CBWR) fixes the order: measured on the dev machine, the same weights bit for bit
    whatever MKL / oneDNN are allowed to use and with 1 or 2 threads, at the speed of the native
    AVX512 kernels. Values the user already set win; RL_ROUTER_NATIVE_CPU=1 turns this off.
    It must run before torch is first imported (the `rl-router` command does; a script that
    imports torch before rl_router keeps torch's own choice)."""
    if os.environ.get("RL_ROUTER_NATIVE_CPU") == "1" or platform.machine().lower() not in ("x86_64", "amd64"):
        return
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("MKL_CBWR", "AVX2,STRICT")


def _quiet_dependencies() -> None:
    """Keep a run's output to what a user needs. TRL warns that `rollout_func` is experimental
    on every run: rl-router depends on it knowingly (trl pinned, its contract tested in
    tests/test_trainer.py). DeepSpeed, imported by accelerate whenever a model is saved, warns
    "Setting accelerator to CPU" on machines without a GPU; saying so up front silences it."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if not any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/accel")):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # transformers 5.23 renamed `gradient_checkpointing`, which TRL 1.16's configs still use (a
    # recipe sets it off on purpose): its deprecation notice, printed at every config, says nothing
    # a user can act on
    import warnings

    warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)


def _quiet_tied_weights() -> None:
    """A model with tied input/output embeddings stores one matrix; transformers' Trainer, on
    every resume, warns that `lm_head.weight` is missing from the checkpoint, which it is by
    design (it is the embedding). That one notice is dropped; any other missing key still shows."""
    import logging

    class TiedHead(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "missing keys in the checkpoint model loaded: ['lm_head.weight']" not in record.getMessage()

    logging.getLogger("transformers.trainer").addFilter(TiedHead())


_portable_cpu_numerics()
_quiet_dependencies()
_quiet_tied_weights()

__version__ = "0.1.0"
