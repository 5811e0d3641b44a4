"""Seeds as pure functions of integers: no stateful RNG is ever consulted or advanced.

A run's randomness is fixed by three integers: the run seed, the step index and the tensor index. Step t draws
with s_t = mix(run_seed, t) and tensor i of probe j with mix(s_t, j, i, tag), so a resumed run needs only t, any
step can be replayed, and z_i does not depend on which other tensors exist or the order they are visited in.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1
_MASK63 = (1 << 63) - 1


def splitmix64(x: int) -> int:
    """One round of SplitMix64 (Steele et al.), a fast bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix(*values: int) -> int:
    """Hash a tuple of integers to a 63-bit seed (63 bits so `manual_seed` accepts it on every device)."""
    h = 0
    for v in values:
        h = splitmix64(h ^ (int(v) & _MASK64))
    return h & _MASK63


def tag_id(tag: str) -> int:
    """Stable integer for a stream tag such as "z", "U" or "tau" (first 8 bytes, little-endian)."""
    return int.from_bytes(tag.encode()[:8].ljust(8, b"\0"), "little")


def step_seed(run_seed: int, step: int) -> int:
    """s_t = mix(run_seed, t): the seed of step t, a pure function of the run seed and the step index."""
    return mix(run_seed, step)


def tensor_seed(seed: int, index: int, probe: int = 0, tag: str = "z") -> int:
    """s_{t,j,i} = mix(s_t, j, i, tag): independent of which other tensors exist or the order they are visited."""
    return mix(seed, probe, index, tag_id(tag))
