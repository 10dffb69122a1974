"""The ``transformers`` engine: continuous batching over the model's own forward pass.

One thread runs the model, step after step, over the rows in flight (up to ``max_batch``).
A row that ends (its ``max_tokens``, the end-of-turn token, a stop sequence in its text,
its caller gone) leaves the batch at once, and waiting jobs take the free rows at the next
step: one long generation no longer holds the others idle, as it did in the padded groups
that ``generate`` runs (each row there computes until the longest one ends). Waiting jobs
are admitted by ``Job.priority`` (lower first: an interactive call before batch work),
then in arrival order.

The batch's keys and values sit in slots allocated once (``slots.SlotCache``), its rows
aligned on the right: every row's last token sits in the same column, shorter rows are
padded on the left, and the attention mask hides the padding (positions are given per
row, so each row's answer is that of its unpadded prompt). A step writes one column in
place; an ended row's slot is refilled, or the last rows move into it. New rows are
prefilled in passes of their own, of like prompt lengths (``batching.length_chunks``),
and copied into free slots.

Prefixes (``share_prefixes``): a prompt that starts with a prefix kept in the prefix cache
(``PrefixCache``) takes that prefix's keys and values instead of computing them, and new
rows sharing a long prefix among themselves compute it once, into the cache. The cache
keeps ``prefix_cache_tokens`` tokens, least recently used out first: the claim order by
prefix key (``batchd.prefix``) brings the requests sharing a prefix in together, so that
each shared prefix is computed once while it stays in the cache. Each row reports the
prefix tokens it took from the cache (``cache_read``) or wrote into it for the others
(``cache_write``).

Measured choices (``bench/local.py``, ``bench/gpu_local.py``, the README): the library's
own continuous batching (``generate_batch``, a paged cache) took 11-20 s for 8 prompts of
32 tokens on the 2-core CPU, most of it setting its cache up, where this engine takes
well under a second.

torch and transformers are imported only when this engine is built (``batchd[local]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import inspect
import itertools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from batchd.backends.local.batching import (
    MIN_SHARED,
    common_length,
    length_chunks,
    prefix_clusters,
)
from batchd.backends.local.generation import Finish, Generated, Job
from batchd.backends.local.slots import SlotCache

log = logging.getLogger(__name__)

_Tokenizer = Any  # a transformers tokenizer: untyped library object
# (prompt, generated so far, next-token scores of one row) -> the scores to sample from
LogitsProcessor = Callable[[Sequence[int], Sequence[int], torch.Tensor], torch.Tensor]
_KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [rows, heads, n, dim]


def cpu_threads(configured: int | None, cores: int | None) -> int:
    """torch's threads on the CPU: as configured, else all cores but one, which stays free
    for the server's own work (HTTP, the store, the scheduler). Measured on 2 cores: with
    torch on both, a long-prompt batch ran at 120-1,800 tokens/s from run to run, as the
    event loop preempted its threads; with one, at a steady 2,500-2,900."""
    if configured:
        return configured
    return max(1, (cores or 1) - 1)


def pick_device(device: str | None) -> str:
    """The configured device, else CUDA when present, else the CPU."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(auto: Any, model_path: str, device: str, threads: int | None) -> Any:
    """``auto.from_pretrained`` (an untyped factory) on ``device``, for inference: float32
    on the CPU with ``cpu_threads`` threads, the checkpoint's own dtype elsewhere."""
    if device == "cpu":
        torch.set_num_threads(cpu_threads(threads, os.cpu_count()))
    dtype = "auto" if device != "cpu" else torch.float32
    model = auto.from_pretrained(model_path, dtype=dtype)
    return model.to(device).eval()


class PrefixCache:
    """Keys and values of prompt prefixes, up to ``capacity`` tokens, least recently used
    out first; looked up by their first MIN_SHARED tokens."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, ...], _KV] = OrderedDict()
        self._by_head: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self._tokens = 0

    def longest(self, prompt: Sequence[int]) -> tuple[int, _KV | None]:
        """The longest cached prefix of ``prompt`` (leaving it one token of its own), as a
        length and that many tokens' keys and values; (0, None) below MIN_SHARED."""
        best, found = 0, None
        mine = tuple(prompt)  # (a tuple is never equal to a list: compare like with like)
        for tokens in self._by_head.get(mine[:MIN_SHARED], ()):
            n = min(common_length(tokens, mine), len(prompt) - 1)
            if n > best:
                best, found = n, tokens
        if best < MIN_SHARED or found is None:
            return 0, None
        self._entries.move_to_end(found)
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in self._entries[found]]

    def wants(self, tokens: tuple[int, ...]) -> bool:
        """Whether ``put`` would keep these tokens (worth cutting their keys and values)."""
        return MIN_SHARED <= len(tokens) <= self.capacity and tokens not in self._entries

    def put(self, tokens: tuple[int, ...], kv: _KV) -> None:
        if not self.wants(tokens):
            return
        self._entries[tokens] = kv
        self._by_head.setdefault(tokens[:MIN_SHARED], []).append(tokens)
        self._tokens += len(tokens)
        while self._tokens > self.capacity:
            evicted, _ = self._entries.popitem(last=False)
            self._tokens -= len(evicted)
            same_head = self._by_head[evicted[:MIN_SHARED]]
            same_head.remove(evicted)
            if not same_head:
                del self._by_head[evicted[:MIN_SHARED]]

    def clear(self) -> None:
        self._entries.clear()
        self._by_head.clear()
        self._tokens = 0


@dataclass(slots=True)
class _Row:
    job: Job
    future: concurrent.futures.Future[Generated]
    cache_read: int = 0
    cache_write: int = 0
    generated: list[int] = field(default_factory=list)
    finish: Finish | None = None


def _segments(tensor: torch.Tensor, row: int, past_width: int, n: int, own: int) -> torch.Tensor:
    """Row ``row`` of a prefill's keys or values without its padding: its ``n`` reused
    tokens, which end at column ``past_width``, and its ``own`` tokens, which end the row."""
    mine = tensor[row : row + 1]
    if not n:
        return mine[:, :, -own:].clone()
    return torch.cat([mine[:, :, past_width - n : past_width], mine[:, :, -own:]], dim=2)


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class ContinuousBatcher:
    """The step loop: admits waiting jobs into free rows, runs one token for every row,
    lets the ended rows go. ``run`` is the body of the engine's thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: _Tokenizer,
        device: str,
        *,
        max_batch: int,
        share_prefixes: bool = True,
        prefix_cache_tokens: int = 32_768,
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._device = device
        self._max_batch = max_batch
        # refill when this many rows are free (or none run): a prefill pass per step
        # for a single row would cost about as much as the step itself
        self._refill_at = max(1, max_batch // 8)
        self._share = share_prefixes
        self._prefixes = PrefixCache(prefix_cache_tokens if share_prefixes else 0)
        self._processors = list(logits_processors)
        # the cache's keyword: ``cache`` in transformers >= 5.2x, ``past_key_values`` before
        takes = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in takes else "past_key_values"
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos = set(eos) if isinstance(eos, list) else {eos}
        self._pad = tokenizer.pad_token_id
        if self._pad is None:
            self._pad = min(self._eos)
        # waiting rows, by (priority, arrival): an interactive call's before batch work
        self._waiting: list[tuple[int, int, _Row]] = []
        self._arrivals = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        # the running batch: a row per slot (None: ended, until refilled or moved), their
        # keys and values, the position and the input token of each slot's next step
        self._slots: list[_Row | None] = []
        self._live = 0
        self._kv = SlotCache(model.config.get_text_config().num_hidden_layers, max_batch, device)
        self._positions = torch.zeros((max_batch,), dtype=torch.long, device=device)
        self._next = torch.zeros((max_batch,), dtype=torch.long, device=device)
        # a decode step's mask goes to sdpa as it is ([rows, 1, 1, columns]); the library's
        # mask building per step costs about as much as a small model's attention
        self._mask_4d = getattr(model.config, "_attn_implementation", None) == "sdpa"
        self.computed_tokens = 0  # prompt tokens that went through the model

    # -- the caller's side (any thread) -------------------------------------------------

    def submit(self, job: Job) -> concurrent.futures.Future[Generated]:
        row = _Row(job, concurrent.futures.Future())
        with self._wake:
            heapq.heappush(self._waiting, (job.priority, next(self._arrivals), row))
            self._wake.notify()
        return row.future

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    # -- the engine's thread ------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._waiting or self._live):
                    self._wake.wait()
                if self._closed:
                    break
                joining = self._take()
            # the slots are inference tensors: a reset after a failure writes them too
            with torch.inference_mode():
                try:
                    if joining:
                        self._admit(joining)
                    if self._live:
                        self._step()
                        self._close_holes()
                except Exception as exc:  # the model failed: fail what it held, keep serving
                    log.exception("a local step over %d rows failed", self._live + len(joining))
                    for row in [*self._running(), *joining]:
                        if not row.future.done():
                            row.future.set_exception(exc)
                    self._reset()
        for row in [*self._running(), *(row for _, _, row in self._waiting)]:
            row.future.cancel()

    def _take(self) -> list[_Row]:
        free = self._max_batch - self._live
        if not self._waiting or (self._live and free < self._refill_at):
            return []
        joining: list[_Row] = []
        while self._waiting and len(joining) < free:
            row = heapq.heappop(self._waiting)[2]
            if row.job.abandoned.is_set():
                row.future.cancel()
            else:
                joining.append(row)
        return joining

    def _running(self) -> list[_Row]:
        return [row for row in self._slots if row is not None]

    def _reset(self) -> None:
        self._slots, self._live = [], 0
        self._kv.move([], [], 0)
        self._prefixes.clear()

    def _admit(self, joining: list[_Row]) -> None:
        """Prefill the joining rows (each over its cached prefix, if any), pick their first
        tokens, and join those still going to the running batch."""
        prompts = [row.job.prompt for row in joining]
        reused: list[tuple[int, _KV | None]] = [(0, None)] * len(joining)
        if self._share:
            reused = [self._prefixes.longest(p) for p in prompts]
            self._compute_shared(joining, reused)
        # Rows starting from a cached prefix and rows without are prefilled apart: together,
        # a short own part after a long prefix is padded to the longest whole prompt, and
        # that padding would stay in the batch's cache, between the row's two parts. Each
        # part goes in passes of like lengths of their own (little padding computed).
        for part in (
            [i for i, (n, _) in enumerate(reused) if n],
            [i for i, (n, _) in enumerate(reused) if not n],
        ):
            own = [len(prompts[i]) - reused[i][0] for i in part]
            for chunk in length_chunks(own):
                rows = [part[c] for c in chunk]
                self._prefill([joining[i] for i in rows], [reused[i] for i in rows])
        log.debug("admitted %d rows: generating %d rows", len(joining), self._live)

    def _prefill(self, joining: list[_Row], reused: list[tuple[int, _KV | None]]) -> None:
        prompts = [row.job.prompt for row in joining]
        lengths = [n for n, _ in reused]
        past_width = max(lengths)
        own = [p[n:] for p, n in zip(prompts, lengths, strict=True)]
        width = max(map(len, own))
        self.computed_tokens += sum(map(len, own))
        ids = [[self._pad] * (width - len(t)) + t for t in own]
        mask = [
            [0] * (past_width - n) + [1] * n + [0] * (width - len(t)) + [1] * len(t)
            for n, t in zip(lengths, own, strict=True)
        ]
        positions = [
            [0] * (width - len(t)) + list(range(n, n + len(t)))
            for n, t in zip(lengths, own, strict=True)
        ]
        cache = DynamicCache()
        if past_width:
            log.debug("%d prefix tokens shared by %d new rows", past_width, sum(map(bool, lengths)))
            shape = next(kv for _, kv in reused if kv is not None)
            for layer, (k0, v0) in enumerate(shape):
                keys, values = [], []
                for n, kv in reused:
                    k, v = kv[layer] if kv is not None else (k0[:, :, :0], v0[:, :, :0])
                    keys.append(_pad_left(k, past_width - n, 2))
                    values.append(_pad_left(v, past_width - n, 2))
                cache.update(torch.cat(keys), torch.cat(values), layer)
        mask_t = torch.tensor(mask, device=self._device)
        out = self._model(
            input_ids=torch.tensor(ids, device=self._device),
            attention_mask=mask_t,
            position_ids=torch.tensor(positions, device=self._device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        lengths_t = torch.tensor([len(p) for p in prompts], device=self._device)
        cache = _cache_of(out)
        if self._share:
            self._keep_prompts(prompts, lengths, cache, past_width + width)
        self._join(joining, cache, mask_t, lengths_t, out.logits[:, -1, :])

    def _keep_prompts(
        self, prompts: list[list[int]], reused: list[int], cache: Any, width: int
    ) -> None:
        """Put in the prefix cache the prompts that computed MIN_SHARED tokens or more of
        their own (a later prompt may start with them), cut out of the prefill's cache: a
        row's reused prefix ends where its own padding starts, its own tokens end the row."""
        past_width = width - max(len(p) - n for p, n in zip(prompts, reused, strict=True))
        for row, (prompt, n) in enumerate(zip(prompts, reused, strict=True)):
            own, tokens = len(prompt) - n, tuple(prompt)
            if own < MIN_SHARED or not self._prefixes.wants(tokens):
                continue
            kv = [
                (
                    _segments(layer.keys, row, past_width, n, own),
                    _segments(layer.values, row, past_width, n, own),
                )
                for layer in cache.layers
            ]
            self._prefixes.put(tokens, kv)

    def _compute_shared(self, joining: list[_Row], reused: list[tuple[int, _KV | None]]) -> None:
        """Rows with nothing cached that share a long prefix among themselves: compute each
        such prefix once, into the cache, and let them all start from it."""
        alone = [i for i, (n, _) in enumerate(reused) if n == 0]
        for cluster, shared in prefix_clusters([joining[i].job.prompt for i in alone]):
            rows = [alone[i] for i in cluster]
            prefix = joining[rows[0]].job.prompt[:shared]
            out = self._model(
                input_ids=torch.tensor([prefix], device=self._device),
                use_cache=True,
                logits_to_keep=1,
            )
            self.computed_tokens += shared
            kv = [(layer.keys, layer.values) for layer in _cache_of(out).layers]
            self._prefixes.put(tuple(prefix), kv)
            for i in rows:
                reused[i] = (shared, kv)
            joining[rows[0]].cache_write = shared
        for row, (n, _) in zip(joining, reused, strict=True):
            if n and not row.cache_write:
                row.cache_read = n

    def _join(
        self,
        joining: list[_Row],
        cache: Any,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        logits: torch.Tensor,
    ) -> None:
        """Pick the prefilled rows' first tokens; those still going take free slots (ended
        rows' first, then new ones), their keys and values copied in."""
        first = self._pick(joining, logits)
        keep = [i for i, row in enumerate(joining) if not self._record(row, first[i])]
        if not keep:
            return
        holes = [i for i, row in enumerate(self._slots) if row is None]
        slots = (holes + list(range(len(self._slots), self._max_batch)))[: len(keep)]
        self._slots += [None] * (max(slots) + 1 - len(self._slots))
        for slot, i in zip(slots, keep, strict=True):
            self._slots[slot] = joining[i]
        self._live += len(keep)
        index = torch.tensor(keep, device=self._device)
        kv = [(layer.keys[index], layer.values[index]) for layer in cache.layers]
        self._kv.place(slots, kv, mask[index])
        at = torch.tensor(slots, device=self._device)
        self._positions[at] = lengths[index]
        self._next[at] = torch.tensor([first[i] for i in keep], device=self._device)

    def _step(self) -> None:
        """One token for every row in use; the rows that end leave their slots."""
        rows = len(self._slots)
        mask = self._kv.open_column()
        out = self._model(
            input_ids=self._next[:rows, None],
            attention_mask=mask[:, None, None, :] if self._mask_4d else mask,
            position_ids=self._positions[:rows, None],
            use_cache=True,
            **{self._cache_arg: self._kv.cache},
        )
        self._kv.end += 1
        self._positions[:rows] += 1
        chosen = self._choose(self._slots, out.logits[:, -1, :])
        self._next[:rows] = chosen
        ended = False
        for slot, (row, token) in enumerate(zip(self._slots, chosen.tolist(), strict=True)):
            if row is not None and self._record(row, token):
                self._slots[slot] = None
                self._kv.free(slot)
                self._live -= 1
                ended = True
        if ended:
            self._kv.trim()

    def _close_holes(self) -> None:
        """Ended rows' slots that no waiting row takes now: the last rows move into them,
        so that the steps compute no ended row."""
        if self._live == len(self._slots) or self._refilling():
            return
        live = self._live
        holes = [i for i in range(live) if self._slots[i] is None]
        movers = [i for i in range(live, len(self._slots)) if self._slots[i] is not None]
        self._kv.move(movers, holes, live)
        if movers:
            source = torch.tensor(movers, device=self._device)
            target = torch.tensor(holes, device=self._device)
            self._positions[target] = self._positions[source]
            self._next[target] = self._next[source]
        for hole, mover in zip(holes, movers, strict=True):
            self._slots[hole] = self._slots[mover]
        del self._slots[live:]

    def _refilling(self) -> bool:
        """Whether the next admission fills free slots (as ``_take`` decides)."""
        with self._wake:
            waiting = bool(self._waiting)
        return waiting and self._max_batch - self._live >= self._refill_at

    def _pick(self, rows: Sequence[_Row], logits: torch.Tensor) -> list[int]:
        picked: list[int] = self._choose(rows, logits).tolist()
        return picked

    def _choose(self, rows: Sequence[_Row | None], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token under its own sampling (greedy rows: the likeliest; an
        ended row's, None, is never read)."""
        if self._processors:
            logits = logits.clone()
            for i, row in enumerate(rows):
                if row is None:
                    continue
                for processor in self._processors:
                    logits[i] = processor(row.job.prompt, row.generated, logits[i])
        chosen = logits.argmax(dim=-1)
        sampled = [
            (i, row.job) for i, row in enumerate(rows) if row and not row.job.sampling.greedy
        ]
        if sampled:
            at = [i for i, _ in sampled]
            chosen[at] = _sample(logits[at], [job for _, job in sampled])
        return chosen

    def _record(self, row: _Row, token: int) -> bool:
        """Add ``token`` to ``row``; when the row has ended, answer it and say so."""
        row.generated.append(token)
        job = row.job
        if job.abandoned.is_set():  # cancelled: the answer is thrown away, stop computing it
            row.finish = Finish.LENGTH
        elif token in self._eos:
            row.finish = Finish.EOS
        elif job.stop and self._stopped(job, row.generated):
            row.finish = Finish.STOP
        elif len(row.generated) >= job.max_tokens:
            row.finish = Finish.LENGTH
        if row.finish is None:
            return False
        if not row.future.done():
            result = Generated(row.generated, row.finish, row.cache_read, row.cache_write)
            row.future.set_result(result)
        return True

    def _stopped(self, job: Job, generated: list[int]) -> bool:
        # enough trailing tokens to hold the longest stop sequence (a token is >= 1 byte)
        tail = generated[-(4 * max(len(s) for s in job.stop) + 4) :]
        text = self._tokenizer.decode(tail, skip_special_tokens=True)
        return any(s in text for s in job.stop)


def _cache_of(output: Any) -> Any:
    """The cache a forward pass returns (``cache``, or ``past_key_values`` before 5.2x)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _sample(logits: torch.Tensor, jobs: Sequence[Job]) -> torch.Tensor:
    """One token per row, drawn under each job's temperature, top_k and top_p."""
    device = logits.device
    temperature = torch.tensor([j.sampling.temperature for j in jobs], device=device)
    scores, order = (logits.float() / temperature[:, None]).sort(dim=-1, descending=True)
    rank = torch.arange(scores.shape[1], device=device)[None, :]
    top_k = torch.tensor([j.sampling.top_k or scores.shape[1] for j in jobs], device=device)
    scores = scores.masked_fill(rank >= top_k[:, None], float("-inf"))
    top_p = torch.tensor([j.sampling.top_p or 1.0 for j in jobs], device=device)
    probs = scores.softmax(dim=-1)
    beyond = probs.cumsum(dim=-1) - probs > top_p[:, None]  # the first token always stays
    probs = probs.masked_fill(beyond, 0.0)
    drawn = torch.multinomial(probs, 1)
    return order.gather(1, drawn)[:, 0]


class TransformersGenerator:
    """The engine of ``kind = "transformers"``: the model, and the thread that runs it."""

    def __init__(
        self,
        model_path: str,
        tokenizer: _Tokenizer,
        *,
        device: str | None,
        max_batch: int,
        share_prefixes: bool = True,
        prefix_cache_tokens: int = 32_768,
        threads: int | None = None,
        logits_processors: Sequence[LogitsProcessor] = (),
        model: Any = None,
    ) -> None:
        self._model_path = model_path
        self._tokenizer = tokenizer
        self._device = pick_device(device)
        self._threads = threads
        self._options: dict[str, Any] = {
            "max_batch": max_batch,
            "share_prefixes": share_prefixes,
            "prefix_cache_tokens": prefix_cache_tokens,
            "logits_processors": logits_processors,
        }
        # the model: already loaded (bench/gpu_local.py), else loaded by start; the
        # embeddings engine shares it
        self.model: Any = model
        self.batcher: ContinuousBatcher | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        if self.model is None:
            self.model = await asyncio.to_thread(self._load)
        self.batcher = ContinuousBatcher(self.model, self._tokenizer, self._device, **self._options)
        self._thread = threading.Thread(target=self.batcher.run, name="transformers-engine")
        self._thread.start()

    def _load(self) -> Any:
        return load_model(AutoModelForCausalLM, self._model_path, self._device, self._threads)

    async def generate(self, job: Job) -> Generated:
        assert self.batcher is not None, "start() first"
        future = self.batcher.submit(job)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            job.abandoned.set()  # waiting: it is skipped; running: its row ends at the next step
            raise

    async def close(self) -> None:
        if self.batcher is not None and self._thread is not None:
            self.batcher.close()
            await asyncio.to_thread(self._thread.join)
