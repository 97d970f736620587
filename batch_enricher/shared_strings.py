"""A workbook's shared-string table, kept sealed on disk with a few blocks decoded in memory.

An `.xlsx` stores each distinct text once, in `xl/sharedStrings.xml`, and cells refer to it by
number. In a customer export nearly every name, ID number and mobile is distinct, so the table
grows with the rows (400,000 strings, about 30 MB as Python objects, in a 100,000-row sheet):
held in memory it would make a streaming reader's memory grow with the file after all.

So the strings go to a scratch file in blocks of `BLOCK` strings, each block sealed
(`sealing.py`: the file holds the same personal data as the workbook) and the file unlinked as
it is created (`tempfile.TemporaryFile`). Memory holds one integer per block and the last
`CACHE_BLOCKS` blocks read. A sheet refers to new strings in the order the table lists them
(writers number strings by first use, row by row), and to a few repeated ones (a city, a
status) over and over: those stay among the cached blocks, the rest are read once, in order.
A table of one block never touches the disk.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections import deque
from itertools import accumulate
from typing import IO, Final

from batch_enricher.sealing import Sealer

__all__ = ["BLOCK", "SharedStrings"]

#: Strings per block (a power of two: the block is `index >> _SHIFT`).
BLOCK: Final = 1024
_SHIFT: Final = BLOCK.bit_length() - 1
#: Decoded blocks kept in memory (about 100 KB each for typical cells).
CACHE_BLOCKS: Final = 16


class SharedStrings:
    """Append every string in table order, then `finish()`; then look them up by index.

    >>> from contextlib import closing
    >>> with closing(SharedStrings()) as table:
    ...     table.extend(["姓名", "张三"])
    ...     table.finish()
    ...     table[1], len(table)
    ('张三', 2)
    """

    def __init__(self, *, cache_blocks: int = CACHE_BLOCKS) -> None:
        self._pending: list[str] = []
        self._count = 0
        self._file: IO[bytes] | None = None
        self._ends: list[int] = [0]  # file offset where each block ends (block b: ends[b:b+2])
        self._seal = Sealer()
        # Decoded blocks by number (None: on disk only), and which are decoded, oldest first.
        self._decoded: list[list[str] | None] = []
        self._loaded: deque[int] = deque()
        self._cache_blocks = max(1, cache_blocks)

    def append(self, text: str) -> None:
        """Add the next string of the table."""
        self._pending.append(text)
        self._count += 1
        if len(self._pending) == BLOCK:
            self._write_block()

    def extend(self, texts: list[str]) -> None:
        """Add strings in table order."""
        for text in texts:
            self.append(text)

    def finish(self) -> None:
        """No more strings: write the last partial block (kept in memory if it is the only one)."""
        if self._pending and self._file is not None:
            self._write_block()
        elif self._pending:
            self._decoded.append(self._pending)  # never evicted: nothing else is loaded
            self._pending = []

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> str:
        """The string at `index` (0-based); IndexError outside the table."""
        if index < 0:
            raise IndexError(index)
        strings = self._decoded[index >> _SHIFT]  # IndexError past the last block
        if strings is None:
            strings = self._load(index >> _SHIFT)
        return strings[index & (BLOCK - 1)]

    def close(self) -> None:
        """Drop the scratch file (its space goes with its descriptor) and the cache."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._decoded.clear()
        self._loaded.clear()

    def _write_block(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        strings, self._pending = self._pending, []
        # Character offsets, then the text: one decode and slices read a block back.
        ends = array("I", accumulate(len(s) for s in strings))
        plain = len(strings).to_bytes(4, "little") + ends.tobytes() + "".join(strings).encode()
        number = len(self._ends) - 1
        self._file.write(self._seal(number.to_bytes(8, "little"), plain))
        self._ends.append(self._ends[-1] + len(plain))
        self._decoded.append(None)

    def _load(self, block: int) -> list[str]:
        # Evicted first in, first out: a hot block (a city repeated on every row) comes back
        # from the file once per `cache_blocks` blocks read, at the cost of one small read.
        assert self._file is not None
        self._file.flush()
        start, end = self._ends[block], self._ends[block + 1]
        sealed = os.pread(self._file.fileno(), end - start, start)
        plain = self._seal(block.to_bytes(8, "little"), sealed)
        count = int.from_bytes(plain[:4], "little")
        ends = array("I")
        ends.frombytes(plain[4 : 4 + 4 * count])
        text = plain[4 + 4 * count :].decode()
        strings = [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        self._decoded[block] = strings
        self._loaded.append(block)
        if len(self._loaded) > self._cache_blocks:
            self._decoded[self._loaded.popleft()] = None
        return strings
