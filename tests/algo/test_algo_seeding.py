"""Hashed sampling seeds: stable, in range, and unrelated for neighbouring samples and steps."""

from algo.seeding import SEED_BITS, derive_seed


def test_stable_and_in_range():
    # The value is part of the reproducibility contract: a resumed run must draw the seeds it drew before.
    assert derive_seed(0, "step", 1) == derive_seed(0, "step", 1)
    seeds = [derive_seed(s, "step", t, g, i) for s in range(3) for t in range(5) for g in range(8) for i in range(8)]
    assert all(0 <= x < 2**SEED_BITS for x in seeds)
    assert len(set(seeds)) == len(seeds)  # 960 samples, no shared noise


def test_additive_collisions_of_the_old_scheme_are_gone():
    # Old: seed*100003 + step + k*n + i, so (step s, sample i+1) == (step s+1, sample i).
    assert derive_seed(0, 5, 0, 1) != derive_seed(0, 6, 0, 0)
    # Parts are not concatenated digits: (1, 23) != (12, 3); an int is not its string.
    assert derive_seed(1, 23) != derive_seed(12, 3)
    assert derive_seed(1) != derive_seed("1")
