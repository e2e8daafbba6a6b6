"""The paged key/value cache: allocated once when an engine starts, handed out in blocks.

Every layer's keys and values live in one tensor of ``blocks x block_size`` token slots. A row
gets all the blocks it can ever need when it is admitted (its P-Tuning v2 prefix, prompt and
``max_new_tokens``), so decoding never allocates and never runs out of memory: a request that
does not fit waits for rows to finish, and one that could never fit is refused at once. Block 0
is never handed out: rows of a padded CUDA-graph batch that hold no request write there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_SIZE = 16


class CacheCapacityError(RuntimeError):
    """A request needs more cache than the engine has in all."""


@dataclass(frozen=True)
class CacheShape:
    layers: int
    kv_heads: int
    head_dim: int
    block_size: int = BLOCK_SIZE

    def bytes_per_block(self, dtype: torch.dtype) -> int:
        element = torch.empty((), dtype=dtype).element_size()
        return 2 * self.layers * self.block_size * self.kv_heads * self.head_dim * element


class KVCache:
    """Keys and values of every layer: ``keys[layer]`` is ``(blocks, block_size, kv_heads,
    head_dim)``; a token at cache index ``i`` of a row sits in block ``table[i // block_size]``
    at offset ``i % block_size``.

    Args:
        shape: the model's layers, KV heads and head size.
        blocks: how many blocks to allocate (at least 2: block 0 is scratch).
        dtype, device: of the model.
    """

    def __init__(
        self, shape: CacheShape, *, blocks: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        if blocks < 2:
            raise ValueError(f"a cache needs at least 2 blocks, got {blocks}")
        self.shape = shape
        size = (shape.layers, blocks, shape.block_size, shape.kv_heads, shape.head_dim)
        self.keys = torch.zeros(size, dtype=dtype, device=device)
        self.values = torch.zeros(size, dtype=dtype, device=device)
        self.blocks = blocks
        self._free = list(range(blocks - 1, 0, -1))  # block 0 is scratch

    @classmethod
    def sized(
        cls, shape: CacheShape, *, nbytes: int, dtype: torch.dtype, device: torch.device
    ) -> KVCache:
        """A cache of as many blocks as fit in ``nbytes``."""
        return cls(
            shape, blocks=max(2, nbytes // shape.bytes_per_block(dtype)), dtype=dtype, device=device
        )

    @property
    def block_size(self) -> int:
        return self.shape.block_size

    @property
    def capacity_tokens(self) -> int:
        """Tokens the cache holds in all (block 0 excluded)."""
        return (self.blocks - 1) * self.block_size

    @property
    def free_tokens(self) -> int:
        return len(self._free) * self.block_size

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def allocate(self, tokens: int) -> list[int] | None:
        """Blocks for ``tokens`` cache entries, or None while too few are free.

        Raises:
            CacheCapacityError: more than the whole cache would ever hold.
        """
        needed = self.blocks_for(tokens)
        if needed > self.blocks - 1:
            raise CacheCapacityError(
                f"the request needs {tokens} cache tokens; this engine holds "
                f"{self.capacity_tokens} in all"
            )
        if needed > len(self._free):
            return None
        taken = self._free[-needed:]
        del self._free[-needed:]
        return taken

    def release(self, blocks: list[int]) -> None:
        self._free.extend(blocks)
