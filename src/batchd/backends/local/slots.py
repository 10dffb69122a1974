"""The running batch's keys and values, in slots written in place (the transformers engine's).

Each layer's keys and values live in one buffer of ``[max rows, heads, columns, dim]``,
allocated when the first rows arrive and regrown only when the columns run out. The rows
in use are a prefix of the slots (``rows``); every row's latest token sits in the same
column (``end - 1``), shorter rows padded on the left, and ``mask`` hides the padding and
the columns of ended rows. A step writes one column for every row in place: no copy of
the whole cache per token (the library's ``DynamicCache`` concatenates each step) and
none when a row ends (its slot is refilled, or the last rows move into the holes).

``cache`` is the object handed to the model: a ``Cache`` whose layers write into these
buffers and give the model a view of the columns some live row uses (``start`` to
``end``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

# columns kept free on the right at a re-layout: at least this many, or half the width
_HEADROOM = 64


# The library's Cache takes only its own layer classes (isinstance checks), and their base
# declares an unannotated __init_subclass__ and __init__: subclassing is the one way in, and
# mypy cannot see those two calls typed (hence the two ignores below).
class _SlotLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One model layer's view of the slots: ``update`` writes the step's keys and values in
    place and answers the columns in use."""

    def __init__(self, slots: SlotCache, index: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.is_initialized = True
        self._slots = slots
        self._index = index

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        *args: Any,  # noqa: ARG002 (the library's signature)
        **kwargs: Any,  # noqa: ARG002
    ) -> tuple[torch.Tensor, torch.Tensor]:
        slots, i = self._slots, self._index
        rows, end = slots.rows, slots.end
        written = end + key_states.shape[2]
        slots.keys[i][:rows, :, end:written] = key_states
        slots.values[i][:rows, :, end:written] = value_states
        return (
            slots.keys[i][:rows, :, slots.start : written],
            slots.values[i][:rows, :, slots.start : written],
        )

    def get_seq_length(self) -> int:
        return self._slots.end - self._slots.start


class SlotCache:
    def __init__(self, layers: int, max_rows: int, device: str) -> None:
        self.max_rows = max_rows
        self.device = device
        self.rows = 0  # slots in use: [0, rows), ended ones among them until moved
        self.start = 0  # the first column a live row uses
        self.end = 0  # the column the next token is written to
        self.keys: list[torch.Tensor] = []  # per layer: [max_rows, heads, columns, dim]
        self.values: list[torch.Tensor] = []
        self.mask = torch.zeros((max_rows, 0), dtype=torch.bool, device=device)
        self.cache = Cache(layers=[_SlotLayer(self, i) for i in range(layers)])

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    def place(
        self, slots: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor
    ) -> None:
        """Put prefilled rows (per layer keys and values ``[len(slots), heads, width, dim]``,
        right-aligned, and their ``mask``) into ``slots``, ending at column ``end``."""
        width = mask.shape[1]
        self.rows = max(self.rows, max(slots) + 1)
        if not self.keys:
            self._allocate(kv, width)
        if self.end < width or self.end >= self.columns:
            self._relayout(width)
        index = torch.tensor(slots, device=self.device)
        at = slice(self.end - width, self.end)
        for layer, (keys, values) in enumerate(kv):
            self.keys[layer][index, :, at] = keys
            self.values[layer][index, :, at] = values
        self.mask[index] = False
        self.mask[index, at] = mask.bool()
        self.start = min(self.start, self.end - width)

    def open_column(self) -> torch.Tensor:
        """Make room for the step's token in every row; the mask of the columns it sees."""
        if self.end >= self.columns:
            self._relayout(0)
        self.mask[: self.rows, self.end] = True
        return self.mask[: self.rows, self.start : self.end + 1]

    def free(self, slot: int) -> None:
        """Forget the row in ``slot``: its columns are hidden until the slot is reused."""
        self.mask[slot] = False

    def trim(self) -> None:
        """Let ``start`` pass the columns that no row in use needs any more."""
        used = self.mask[: self.rows, self.start : self.end].any(dim=0).nonzero()
        self.start += int(used[0]) if len(used) else self.end - self.start

    def move(self, sources: list[int], targets: list[int], rows: int) -> None:
        """Move the rows in slots ``sources`` to ``targets``, then keep ``rows`` slots."""
        if sources:
            src = torch.tensor(sources, device=self.device)
            dst = torch.tensor(targets, device=self.device)
            used = slice(self.start, self.end)
            for buffers in (self.keys, self.values):
                for buffer in buffers:
                    buffer[dst, :, used] = buffer[src, :, used]
            self.mask[dst] = self.mask[src]
        self.mask[rows : self.rows] = False
        self.rows = rows
        if not rows:
            self.start = self.end = 0

    def _allocate(self, kv: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> None:
        columns = width + max(_HEADROOM, width // 2)
        for keys, values in kv:
            for buffers, tensor in ((self.keys, keys), (self.values, values)):
                _, heads, _, dim = tensor.shape
                buffers.append(tensor.new_zeros((self.max_rows, heads, columns, dim)))
        self.mask = torch.zeros((self.max_rows, columns), dtype=torch.bool, device=self.device)
        self.start = self.end = width

    def _relayout(self, need: int) -> None:
        """Move the columns in use to end at max(``need``, their width), with room on the
        right; the buffers grow when they lack it."""
        used = self.end - self.start
        end = max(need, used)
        columns = max(self.columns, end + max(_HEADROOM, end // 2))
        moved = functools.partial(
            _relaid,
            columns=columns,
            rows=self.rows,
            source=self.start,
            target=end - used,
            width=used,
        )
        self.keys = [moved(b, 2) for b in self.keys]
        self.values = [moved(b, 2) for b in self.values]
        self.mask = moved(self.mask, 1, clear=True)
        self.start, self.end = end - used, end


def _relaid(
    buffer: torch.Tensor,
    dim: int,
    *,
    columns: int,
    rows: int,
    source: int,
    target: int,
    width: int,
    clear: bool = False,
) -> torch.Tensor:
    """``buffer`` with ``columns`` columns along ``dim``, the first ``rows`` rows' ``width``
    columns from ``source`` moved to ``target``: a new buffer when it grows or ``clear``
    (nothing else kept), else the same one."""
    kept = buffer[:rows].narrow(dim, source, width).clone()
    if clear or buffer.shape[dim] < columns:
        shape = list(buffer.shape)
        shape[dim] = columns
        buffer = buffer.new_zeros(shape)
    buffer[:rows].narrow(dim, target, width).copy_(kept)
    return buffer
