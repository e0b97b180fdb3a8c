"""Sampling seeds derived by hashing, so that no two samples share noise.

A seed built by addition (``seed * C + step + k * n + i``) repeats itself: step s + 1 replays step s shifted
by one sample, and replicas that number their samples locally reuse each other's seeds. Hashing every
coordinate of a sample (run seed, step, prompt index in the step, sample index) gives each sample its own
seed, the same wherever and whenever it is drawn: a sample re-issued to another replica after a crash, or
redrawn by a resumed run, gets the seed it had.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # torch.Generator.manual_seed and vLLM take any non-negative int64


def derive_seed(*parts: int | str) -> int:
    """A seed in [0, 2**63) from the ordered parts; different parts give unrelated seeds.

    The parts are joined with a separator that cannot occur inside a part's repr, so (1, 23) and (12, 3)
    differ; ints and strings of the same digits differ too ("1" vs 1).
    """
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)
