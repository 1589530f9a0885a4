"""Running the proxy models beside the base: where each decoding step's proxy forward runs.

:class:`~routekit.proxy.processor.ProxyLogitsProcessor` can start the proxies' forward for a
step as soon as the base's forward for that step starts (a forward pre-hook on the base sees
the token both consume), so the two run at once and the processor only collects the result.
This file holds the pieces: the proxies' KV caches and forward (:class:`ProxyStepper`), the
two places it may run beside the caller (:class:`ThreadRunner`, :class:`ProcessRunner`), how
the mode is chosen (:func:`resolve_mode`), and the stateless base hook that reads the running
call's processor from a ``ContextVar`` (:func:`beside`), so threads sharing a base never see
each other's processor.

* **thread**: one worker thread per call. On CUDA it launches on its own stream (the step
  waits on an event of the caller's stream, the caller on the worker's), so the GPU overlaps
  the small models' kernels with the base's. On CPU the worker's ops run in their own OpenMP
  team with the caller's thread count, but Python holds one GIL: for models as small as the
  world's, whose step is mostly Python, a thread gains nothing (measured 0.93x).
* **process**: one forked child per call (CPU, Linux), holding copy-on-write views of the
  proxies' weights as they were at the call's start, its own interpreter and the caller's
  torch thread count. Per step it receives the new token ids and sends back raw logits.
* **auto** (``concurrent=None``): thread when a proxy model is on CUDA; process when
  everything is on CPU, ``fork`` exists, this process may use >= 2 cores and about one of
  them is idle (cores minus the 1-minute load average >= 1); else sequential. ``concurrent=False`` forces the sequential path, ``True`` the automatic
  concurrent one (refused where none works), ``"thread"`` / ``"process"`` one of them.

Every mode runs the same models on the same inputs with the same thread count, so the
scores are equal to the sequential path's bit for bit (tests/test_proxy.py checks it).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, Literal

import torch
from transformers import DynamicCache, PreTrainedModel

from ..errors import ConfigError

# The processor imports this module, so it is named here only as a string: the type is
# the caller's ProxyLogitsProcessor, which this module never needs to import.
ProxyLogitsProcessor = Any

#: ``None`` (choose), ``False`` (sequential), ``True`` (concurrent, chosen), or a backend.
ConcurrentLike = bool | Literal["thread", "process"] | None
Mode = Literal["sequential", "thread", "process"]


def _new_cache(model: PreTrainedModel) -> Any:
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


class ProxyStepper:
    """The distinct proxy models of one call, their KV caches, and one step of their forward.

    ``prefill`` starts fresh caches for the ``active`` models; ``step`` feeds them one token.
    Both return each active model's last-position logits, on that model's device.
    """

    def __init__(self, models: list[PreTrainedModel], call_kwargs: list[tuple[str, dict]]) -> None:
        self.models = models
        self.call_kwargs = call_kwargs
        self.devices = [m.device for m in models]  # looked up once, not every step
        self.active: list[int] = []
        self.caches: list[Any] = []

    def _run(self, m: int, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cache_kw, extra = self.call_kwargs[m]
        dev = self.devices[m]
        out = self.models[m](
            input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
            **{cache_kw: self.caches[m]}, **extra,
        )
        return out.logits[:, -1]

    def prefill(self, active: list[int], ids: torch.Tensor, mask: torch.Tensor,
                pos: torch.Tensor) -> list[torch.Tensor]:
        self.active = list(active)
        self.caches = [_new_cache(m) if i in self.active else None for i, m in enumerate(self.models)]
        return [self._run(m, ids, mask, pos) for m in self.active]

    def step(self, new: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> list[torch.Tensor]:
        return [self._run(m, new, mask, pos) for m in self.active]


class Pending:
    """A launched step: ``result()`` waits for it and returns the active models' logits."""

    def __init__(self, wait: Callable[[], list[torch.Tensor]]) -> None:
        self._wait = wait

    def result(self) -> list[torch.Tensor]:
        return self._wait()


class ThreadRunner:
    """One worker thread for one call; on CUDA, the worker launches on its own stream(s)."""

    def __init__(self, stepper: ProxyStepper) -> None:
        self.stepper = stepper
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="routekit-proxy")
        cuda = sorted({d for d in stepper.devices if d.type == "cuda"}, key=str)
        self._streams = {d: torch.cuda.Stream(d) for d in cuda}

    def submit(self, method: str, *args: Any) -> Pending:
        fn = getattr(self.stepper, method)
        inference = torch.is_inference_mode_enabled()
        ready = None
        src = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        if self._streams and src is not None and src.type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(src))  # the inputs exist on the caller's stream

        def work() -> tuple[list[torch.Tensor], list[Any]]:
            grad = torch.inference_mode() if inference else torch.no_grad()
            with grad, contextlib.ExitStack() as stack:
                for s in self._streams.values():
                    stack.enter_context(torch.cuda.stream(s))
                    if ready is not None:
                        s.wait_event(ready)
                out = fn(*args)
                done = []
                for s in self._streams.values():
                    ev = torch.cuda.Event()
                    ev.record(s)
                    done.append(ev)
                return out, done

        fut: Future = self._pool.submit(work)

        def wait() -> list[torch.Tensor]:
            out, done = fut.result()
            for t in out:
                if t.device.type == "cuda":
                    cur = torch.cuda.current_stream(t.device)
                    for ev in done:
                        cur.wait_event(ev)
                    t.record_stream(cur)  # the caller's stream now uses the worker's memory
            return out

        return Pending(wait)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _tensor_bytes(t: torch.Tensor) -> tuple[bytes, tuple[int, ...], str]:
    t = t.detach().contiguous().cpu()
    return t.view(torch.uint8).numpy().tobytes(), tuple(t.shape), str(t.dtype).removeprefix("torch.")


def _from_bytes(data: bytes, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    if not shape or 0 in shape:
        return torch.empty(shape, dtype=getattr(torch, dtype))
    return torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)).view(shape)


def _serve(conn: Any, stepper: ProxyStepper, threads: int, inference: bool) -> None:
    """The forked child's loop: run the stepper on each message until told to stop."""
    torch.set_num_threads(threads)
    grad = torch.inference_mode() if inference else torch.no_grad()
    with grad:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the parent went away
                return
            if msg is None:
                return
            method, arrays = msg[0], msg[1:]
            try:
                args = [a if isinstance(a, list) else torch.from_numpy(a) for a in arrays]
                out = getattr(stepper, method)(*args)
                conn.send(("ok", [_tensor_bytes(t) for t in out]))
            except Exception:  # noqa: BLE001 - the parent re-raises it with the child's traceback
                conn.send(("error", traceback.format_exc()))


def _stop(conn: Any, proc: Any) -> None:
    with contextlib.suppress(Exception):
        conn.send(None)
    with contextlib.suppress(Exception):
        conn.close()
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=5)


class ProcessRunner:
    """One forked child for one call, holding the stepper (CPU models only)."""

    def __init__(self, stepper: ProxyStepper) -> None:
        if any(d.type != "cpu" for d in stepper.devices):
            raise ConfigError(
                "concurrent='process' runs the proxies in a forked child, which works for CPU "
                f"models only; these are on {sorted({str(d) for d in stepper.devices})}. Use "
                "concurrent='thread' (a CUDA stream) or concurrent=None."
            )
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, daemon=True, name="routekit-proxy",
            args=(child, stepper, torch.get_num_threads(), torch.is_inference_mode_enabled()))
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop, self._conn, self._proc)

    def submit(self, method: str, *args: Any) -> Pending:
        msg = [method] + [a if isinstance(a, list) else a.detach().cpu().numpy() for a in args]
        self._conn.send(tuple(msg))

        def wait() -> list[torch.Tensor]:
            status, payload = self._conn.recv()
            if status != "ok":
                raise RuntimeError(f"the proxy models' worker process failed:\n{payload}")
            return [_from_bytes(*p) for p in payload]

        return Pending(wait)

    def close(self) -> None:
        self._finalizer()


Runner = ThreadRunner | ProcessRunner


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_concurrent(concurrent: object) -> None:
    """Refuse a ``concurrent`` value that names no mode."""
    if concurrent not in (None, True, False, "thread", "process"):
        raise ConfigError(
            f"concurrent must be None, True, False, 'thread' or 'process', got {concurrent!r}.")


def spare_cores() -> float:
    """Cores this process may use minus the 1-minute load average (this process included)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average here: assume the cores are free
        load = 0.0
    return usable_cores() - load


def resolve_mode(concurrent: ConcurrentLike, devices: list[torch.device]) -> Mode:
    """The mode a call with proxy models on ``devices`` runs in (see the module docstring)."""
    check_concurrent(concurrent)
    if concurrent is False:
        return "sequential"
    if concurrent in ("thread", "process"):
        return concurrent  # type: ignore[return-value]
    if any(d.type == "cuda" for d in devices):
        return "thread"
    can_fork = "fork" in mp.get_all_start_methods() and not mp.current_process().daemon
    if all(d.type == "cpu" for d in devices) and can_fork and usable_cores() >= 2:
        # A worker pays only with a core to run on: on a machine already busy (other jobs)
        # it waits to be scheduled every step, measured 0.77x of sequential at load 6.6 on
        # 2 cores. ``True`` takes it regardless.
        if concurrent is True or spare_cores() >= 1:
            return "process"
    if concurrent is True:
        raise ConfigError(
            f"concurrent=True, but no concurrent path fits here (proxy devices "
            f"{sorted({str(d) for d in devices})}, {usable_cores()} usable cores, fork "
            f"{'available' if can_fork else 'unavailable'}); pass concurrent='thread' to force "
            "a worker thread, or None to let routekit choose."
        )
    return "sequential"


def make_runner(mode: Mode, stepper: ProxyStepper) -> Runner | None:
    if mode == "thread":
        return ThreadRunner(stepper)
    if mode == "process":
        return ProcessRunner(stepper)
    return None


# -- the base's hook ------------------------------------------------------------------------
_BESIDE: ContextVar[dict[int, ProxyLogitsProcessor] | None] = ContextVar(
    "routekit_proxy_beside", default=None)
_HOOK_LOCK = threading.Lock()
_HOOKED = "_routekit_proxy_beside_hook"


def _pre_forward(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    proc = (_BESIDE.get() or {}).get(id(module))
    if proc is None:
        return
    ids = kwargs.get("input_ids", args[0] if args else None)
    if isinstance(ids, torch.Tensor) and ids.ndim == 2:
        proc.launch(ids)


@contextlib.contextmanager
def beside(model: PreTrainedModel, proc: ProxyLogitsProcessor) -> Iterator[None]:
    """Inside the block, this context's forward calls of ``model`` start ``proc``'s proxies."""
    with _HOOK_LOCK:
        if not getattr(model, _HOOKED, False):
            # Stateless and installed once: it reads the running call's processor, so it
            # costs a dictionary look-up for calls outside any block.
            model.register_forward_pre_hook(_pre_forward, with_kwargs=True)
            setattr(model, _HOOKED, True)
    current = dict(_BESIDE.get() or {})
    current[id(model)] = proc
    token = _BESIDE.set(current)
    try:
        yield
    finally:
        _BESIDE.reset(token)
        proc.close()
