"""Train the tiny router's byte-level BPE tokenizer from the shipped recorded data.

Deterministic for a given corpus; writes rl_router/assets/tiny_tokenizer/tokenizer.json.
Usage: python scripts/train_tokenizer.py [--vocab-size 4096]
"""

from __future__ import annotations

import argparse

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers import AddedToken

from rl_router.pools.recorded import RecordedPool
from rl_router.prompts import PROTOCOL, system_prompt
from rl_router.tiny import PROTOCOL_TOKENS, SPECIAL_TOKENS, TOKENIZER_DIR


def corpus() -> list[str]:
    pool = RecordedPool.packaged(["gsm8k", "mmlu"])
    texts = [PROTOCOL, system_prompt(pool.models), "Task: Budget: $0.0100 error: over budget unknown model"]
    for t in pool.tasks():
        texts.append(t.question)
        for a in pool.recorded(t.task_id).answers.values():
            texts.append(a.response)
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in PROTOCOL_TOKENS])
    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    tok.save(str(TOKENIZER_DIR / "tokenizer.json"))
    print(f"vocab {tok.get_vocab_size()} -> {TOKENIZER_DIR}")


if __name__ == "__main__":
    main()
