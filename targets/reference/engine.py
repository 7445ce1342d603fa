"""Engines behind the worker server, and the continuous-batching engine over a real model.

Iteration-level batching: every step first admits waiting requests (prefill, within a token
budget) into free cache slots, then decodes all running sequences in one batched forward.
A request that arrives mid-generation joins at the next step; a finished or cancelled one
leaves at once and its slot is reused.

A request that fails inside the engine fails alone: a prefill that raises is redone one
sequence at a time, and sampling or detokenizing errors end only their own sequence. Only a
batched decode pass that raises (nothing to tell its sequences apart) fails the whole batch.
"""

from __future__ import annotations

import collections
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from .decoder import BatchDecoder
from .liveness import StepTimes
from .params import GenerationRequest, Output
from .protocol import EngineFull, EngineThread, Prompt

__all__ = ["BatchEngine"]


@dataclass
class _Seq:
    request: GenerationRequest
    eos_ids: frozenset[int]
    slot: int = -1
    generated: list[int] = field(default_factory=list)
    text_sent: int = 0  # characters of the decoded text already emitted
    position: int = 0  # next cache position to write
    admitted_step: int = -1
    finished_step: int = -1
    max_batch: int = 0
    generator: torch.Generator | None = None


class _Detokenizer:
    """Incremental text for one sequence: holds back a partial UTF-8 character and any tail
    that could still become a stop string."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def advance(self, seq: _Seq) -> tuple[str, bool]:
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        stops = seq.request.params.stop
        if stops:
            start = max(0, seq.text_sent - max(len(s) for s in stops))
            hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
            if hits:
                cut = min(hits)
                delta = text[seq.text_sent : cut] if cut > seq.text_sent else ""
                seq.text_sent = max(cut, seq.text_sent)
                return delta, True
        end = len(text)
        if text.endswith("\ufffd"):
            end -= 1
        for s in stops:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[:end].endswith(s[:k]):
                    end = min(end, len(text[:end]) - k)
                    break
        end = max(end, seq.text_sent)
        delta = text[seq.text_sent : end]
        seq.text_sent = end
        return delta, False

    def flush(self, seq: _Seq) -> str:
        text: str = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        delta = text[seq.text_sent :]
        seq.text_sent = len(text)
        return delta


class BatchEngine(EngineThread):
    """Continuous batching over a Llama-family model with a preallocated KV cache."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_name: str,
        *,
        max_num_seqs: int = 32,
        max_model_len: int = 2048,
        max_batched_tokens: int = 512,
        max_waiting: int = 1024,
        stall_timeout: float = 15.0,
        history: int = 1024,
        prefix_cache_size: int = 16,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        limit = getattr(model.config, "max_position_embeddings", max_model_len)
        self.max_model_len = min(max_model_len, limit)
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.max_waiting = max_waiting
        self.step_times = StepTimes(floor=stall_timeout)
        self.decoder = BatchDecoder(model, max_num_seqs, self.max_model_len)
        self.detok = _Detokenizer(tokenizer)
        self.eos_ids = self._eos_ids(model, tokenizer)
        self._inbox: collections.deque[GenerationRequest] = collections.deque()
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._running: list[_Seq] = []
        self.step = 0
        self.last_progress = time.monotonic()
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.finished: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self.crashed: str | None = None
        self._pending: list[_Seq] = []  # finished during this step, removed at its end
        self.prefix_cache_size = prefix_cache_size
        self._prefixes: collections.OrderedDict[tuple[int, ...], Any] = collections.OrderedDict()
        self.cached_prompt_tokens = 0
        self.threads = threads  # torch intra-op threads of the engine thread (None: as is)
        from .quant import describe_weights, needs_calibration

        self.weights = describe_weights(model)  # format and bytes a token reads (/debug/engine)
        # quantized layers that choose by batch size are timed on the engine thread before
        # the first step; the worker is not ready meanwhile: requests arriving then (their
        # parsing holds the GIL) skewed the timings, and a worker once chose the dense weights
        # at every batch size
        self.calibrating = needs_calibration(model)

    @property
    def dtype(self) -> str:
        """What the engine computes in, as a torch dtype's name: the decoder's, which is the
        embedding's (bfloat16 around weight-only quantized layers)."""
        return str(self.decoder.dtype).removeprefix("torch.")

    @staticmethod
    def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
        ids: set[int] = set()
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(e) for e in eos)
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        return frozenset(ids)

    # -- tokenization -------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, str]]) -> Prompt:
        text: str = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                       tokenize=False)
        return Prompt(self.tokenizer(text, add_special_tokens=False)["input_ids"], text)

    def encode_text(self, text: str) -> Prompt:
        return Prompt(self.tokenizer(text)["input_ids"], text)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_resume(self, token_ids: list[int], text_sent: int) -> str | None:
        """Why a continuation could not come from this model, or None: every token id within
        the vocabulary, and `text_sent` within the text the tokens decode to."""
        vocab = int(self.model.config.vocab_size)
        bad = next((t for t in token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            return f"token id {bad} is outside the vocabulary (0..{vocab - 1})"
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        if text_sent > len(text):
            return (f"text_sent {text_sent} is past the end of the text those tokens decode "
                    f"to ({len(text)} characters)")
        return None

    # -- lifecycle ----------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            if len(self._inbox) + len(self._waiting) >= self.max_waiting:
                raise EngineFull(f"{self.max_waiting} requests already waiting")
            self._inbox.append(request)
            self._cond.notify()

    def healthy(self) -> tuple[bool, str]:
        if self.crashed:
            return False, f"engine crashed: {self.crashed}"
        if not self.thread_alive():
            return False, "engine thread is not running"
        if self.calibrating:
            return False, "timing its quantized kernels against the dense ones"
        busy = bool(self._running or self._waiting or self._inbox)
        idle_for = time.monotonic() - self.last_progress
        if busy and idle_for > self.step_times.stall_limit:
            return False, f"engine has work but made no progress for {idle_for:.1f} s"
        return True, "ok"

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "step": self.step,
                "running": len(self._running),
                "waiting": len(self._waiting) + len(self._inbox),
                "generated_tokens": self.generated_tokens,
                "prompt_tokens": self.prompt_tokens,
                "cached_prompt_tokens": self.cached_prompt_tokens,
                "last_progress": self.last_progress,
                "batch_sizes": dict(self.batch_sizes),
                "max_num_seqs": self.max_num_seqs,
                "max_model_len": self.max_model_len,
                "dtype": self.dtype,
                "weights": self.weights,
                "threads": self.threads,
                # the supervisor's liveness follows these (targets/reference/liveness.py)
                "step_s_max": self.step_times.slowest,
                "stall_after_s": self.step_times.stall_limit,
                "finished": list(self.finished),
            }

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # per thread under OpenMP: this one's
        self._calibrate()
        while True:
            with self._cond:
                while not (self._stopping or self._inbox or self._waiting or self._running):
                    self._cond.wait()
                    self.last_progress = time.monotonic()
                if self._stopping:
                    break
                while self._inbox:
                    self._waiting.append(_Seq(self._inbox.popleft(), self.eos_ids))
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as exc:  # one bad step must not kill the worker: fail its requests
                self._fail_all(f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
        self._fail_all("worker is shutting down")

    def _calibrate(self) -> None:
        """Where quantized layers choose (int4 beside dense weights, --quantize auto; int8's
        kernel or its converted weights), time which runs faster at how many rows, here on the
        engine thread with its threads, before the first step."""
        from .quant import calibrate, describe_weights, set_packed_rows

        if not self.calibrating:
            return
        started = time.monotonic()
        try:
            with torch.inference_mode():
                rows = calibrate(self.model, self.decoder.timing_step, self.max_num_seqs)
        except Exception:  # a kernel this CPU or torch refuses: serve on the dense weights
            traceback.print_exc()
            set_packed_rows(self.model, 0)
            rows = 0
        finally:
            self.calibrating = False
            self.last_progress = time.monotonic()
        self.weights = describe_weights(self.model)
        print(f"engine: weights {self.weights['format']}: steps of up to {rows} sequences run "
              "the packed kernels, larger ones the dense (or converted) weights (timed here in "
              f"{time.monotonic() - started:.2f} s)", file=sys.stderr, flush=True)

    def _fail_all(self, error: str) -> None:
        with self._cond:
            seqs = self._running + list(self._waiting)
            self._running, self._waiting = [], collections.deque()
        for seq in seqs:
            self._emit(seq, "", finished=True, reason="error", error=error)

    def _emit(
        self, seq: _Seq, text: str, token: int | None = None, *, finished: bool = False,
        reason: str | None = None, error: str | None = None,
    ) -> None:
        req = seq.request
        if finished:
            seq.finished_step = self.step
            self.finished.append({
                "request_id": req.request_id,
                "admitted_step": seq.admitted_step,
                "finished_step": seq.finished_step,
                "max_batch": seq.max_batch,
                "completion_tokens": len(seq.generated),
                "finish_reason": reason,
            })
        req.sink(Output(
            request_id=req.request_id,
            text=text,
            token_ids=(token,) if token is not None else (),
            finished=finished,
            finish_reason=reason,
            prompt_tokens=len(req.prompt_ids),
            completion_tokens=len(seq.generated),
            error=error,
            emitted_at=time.monotonic(),
        ))

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._waiting if s.request.cancelled.is_set()]:
            self._waiting.remove(seq)
            self._emit(seq, "", finished=True, reason="cancelled")
        self._remove([s for s in self._running if s.request.cancelled.is_set()], "cancelled")

    def _remove(self, seqs: list[_Seq], reason: str | None) -> None:
        """Take finished sequences out and keep the occupied slots compact (0..B-1)."""
        for seq in sorted(seqs, key=lambda s: s.slot, reverse=True):
            last = self._running[-1]
            if last is not seq:
                self.decoder.move(last.slot, seq.slot, last.position)
                last.slot = seq.slot
                self._running[seq.slot] = last
            self._running.pop()
            if reason is not None:
                self._emit(seq, "", finished=True, reason=reason)

    def _step(self) -> None:
        began = time.monotonic()
        with self._cond:
            self._drop_cancelled()
        decoding = len(self._running)
        self._admit()
        if decoding:
            self._decode(decoding)
        self.step += 1
        self.last_progress = time.monotonic()
        self.step_times.record(self.last_progress - began)

    def _admit(self) -> None:
        """Admit waiting requests within the step's token budget and prefill them together."""
        budget = self.max_batched_tokens
        admitted: list[tuple[_Seq, list[int], int]] = []
        while self._waiting and len(self._running) < self.max_num_seqs:
            with self._cond:
                seq = self._waiting[0]
                context = seq.request.prompt_ids + seq.request.resume_ids
                saved, reused = self._prefix_match(context)
                cost = len(context) - reused
                if cost > budget and budget < self.max_batched_tokens:
                    break  # next step: running streams must not stall behind long prefills
                self._waiting.popleft()
            budget -= cost
            seq.slot = len(self._running)
            seq.admitted_step = self.step
            seq.generated = list(seq.request.resume_ids)
            seq.text_sent = seq.request.resume_text_sent
            if saved is not None:
                self.decoder.load_prefix(seq.slot, saved, reused)
            self._running.append(seq)
            admitted.append((seq, context, reused))
        if not admitted:
            return
        for seq, context, reused, logits in self._prefill(admitted):
            self._keep_prefix(seq.slot, context)
            self.prompt_tokens += len(context)
            self.cached_prompt_tokens += reused
            seq.position = len(context)
            token = self._sample(seq, logits)[0]
            if token is not None:
                self._isolated(seq, self._advance, token)
        self._flush_removals()

    def _prefill(self, admitted: list[tuple[_Seq, list[int], int]]
                 ) -> list[tuple[_Seq, list[int], int, torch.Tensor]]:
        """Prefill the admitted sequences together; if that fails, each alone, so a bad one
        (a token id outside the vocabulary, say) fails by itself and the others go on."""
        try:
            logits = self.decoder.prefill_many([(seq.slot, context, reused)
                                                for seq, context, reused in admitted])
            return [(seq, context, reused, logits[row : row + 1])
                    for row, (seq, context, reused) in enumerate(admitted)]
        except Exception as exc:
            if len(admitted) == 1:
                self._fail_one(admitted[0][0], exc)
                return []
        done = []
        for seq, context, reused in admitted:
            try:
                logits = self.decoder.prefill_many([(seq.slot, context, reused)])
            except Exception as exc:
                self._fail_one(seq, exc)
                continue
            done.append((seq, context, reused, logits))
        return done

    def _fail_one(self, seq: _Seq, exc: BaseException) -> None:
        """End one sequence with an error; it leaves the batch at the end of this step."""
        traceback.print_exception(exc)
        self._emit(seq, "", finished=True, reason="error",
                   error=f"engine error in this request: {type(exc).__name__}: {exc}")
        self._pending.append(seq)

    def _isolated(self, seq: _Seq, fn: Any, *args: Any) -> None:
        """`fn(seq, *args)`; an exception fails `seq` alone, not the batch around it."""
        try:
            fn(seq, *args)
        except Exception as exc:
            self._fail_one(seq, exc)

    def _prefix_match(self, context: list[int]) -> tuple[Any, int]:
        """The longest cached prefix of `context` (saved KV, length), or (None, 0).

        Prefix caching (vLLM's automatic prefix caching, in small): prompts of one deployment
        share a system prompt or a conversation's earlier turns, so their KV is computed once.
        At least the last token is always recomputed, for its logits.
        """
        best, best_len = None, 0
        for key, saved in self._prefixes.items():
            limit = min(len(key), len(context) - 1)
            n = 0
            while n < limit and key[n] == context[n]:
                n += 1
            if n > best_len:
                best, best_len = saved, n
        if best is None or best_len < 8:
            return None, 0
        return best, best_len

    def _keep_prefix(self, slot: int, context: list[int]) -> None:
        if self.prefix_cache_size <= 0:
            return
        key = tuple(context)
        self._prefixes.pop(key, None)
        self._prefixes[key] = self.decoder.save_prefix(slot, len(context))
        while len(self._prefixes) > self.prefix_cache_size:
            self._prefixes.popitem(last=False)

    def _decode(self, count: int) -> None:
        seqs = self._running[:count]
        for seq in seqs:
            seq.max_batch = max(seq.max_batch, count)
        self.batch_sizes[count] += 1
        tokens = torch.tensor([s.generated[-1] for s in seqs], device=self.decoder.device)
        positions = torch.tensor([s.position for s in seqs], device=self.decoder.device)
        logits = self.decoder.decode(tokens, positions)
        for seq in seqs:
            seq.position += 1
        sampled = self._sample_batch(seqs, logits)
        for seq, token in zip(seqs, sampled, strict=True):
            if token is not None:
                self._isolated(seq, self._advance, token)
        self._flush_removals()

    def _flush_removals(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._remove(pending, None)

    def _sample_batch(self, seqs: list[_Seq], logits: torch.Tensor) -> list[int | None]:
        """One token per sequence; None for a sequence whose sampling failed (it is failed
        alone: the others in the batch go on)."""
        self._suppress_eos(seqs, logits)
        if all(s.request.params.greedy for s in seqs):
            return [int(t) for t in logits.argmax(dim=-1).tolist()]
        tokens: list[int | None] = []
        for i, seq in enumerate(seqs):
            try:
                tokens.append(self._sample_row(seq, logits[i]))
            except Exception as exc:
                self._fail_one(seq, exc)
                tokens.append(None)
        return tokens

    def _sample(self, seq: _Seq, logits: torch.Tensor) -> list[int | None]:
        return self._sample_batch([seq], logits)

    def _suppress_eos(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        eos = list(self.eos_ids)
        for i, seq in enumerate(seqs):
            p = seq.request.params
            if eos and (p.ignore_eos or len(seq.generated) < p.min_tokens):
                logits[i, eos] = float("-inf")

    def _sample_row(self, seq: _Seq, row: torch.Tensor) -> int:
        p = seq.request.params
        if p.greedy:
            return int(row.argmax())
        if p.seed is not None:
            # seeded per position, not per stream: a stream resumed elsewhere after k tokens
            # draws token k+1 exactly as the undisturbed stream would
            seq.generator = torch.Generator().manual_seed(
                (p.seed * 1_000_003 + len(seq.generated)) % 2**63)
        probs = torch.softmax(row / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < p.top_p
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def _advance(self, seq: _Seq, token: int) -> None:
        """Append a sampled token and decide whether the sequence ends here."""
        params = seq.request.params
        if token in self.eos_ids and not params.ignore_eos:
            tail = self.detok.flush(seq)
            self._finish(seq, tail, "stop")
            return
        seq.generated.append(token)
        self.generated_tokens += 1
        delta, stopped = self.detok.advance(seq)
        if stopped:
            self._finish(seq, delta, "stop", token)
            return
        out_of_room = seq.position + 1 >= self.max_model_len
        if len(seq.generated) >= params.max_tokens or out_of_room:
            delta += self.detok.flush(seq) if not params.stop else ""
            self._finish(seq, delta, "length", token)
            return
        self._emit(seq, delta, token)

    def _finish(self, seq: _Seq, text: str, reason: str, token: int | None = None) -> None:
        self._emit(seq, text, token, finished=True, reason=reason)
        self._pending.append(seq)
