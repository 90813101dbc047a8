"""Running lnnode's per-case work on Ray: ``lnnode infer --ray`` and ``lnnode score --ray``.

One Ray actor per worker holds a copy of the models (built in the worker, on its first case); the driver sends
each worker one case at a time, as paths (a volume is read where it is processed, never shipped), and takes the
outcomes as they finish. A case that fails is an outcome like any other; a worker that dies fails the case it
held and gets no more, the others go on.

``address``: ``local`` starts a Ray of its own on this machine for the run (listening on 127.0.0.1 only, with an
access token of its own kept in the environment rather than a file, no usage reporting) and stops it after;
``auto`` joins the cluster this machine is part of (``ray start``); else a cluster's address (``HOST:PORT`` or
``ray://HOST:PORT``). On a cluster the images, the model folder and the output folder must be at the same paths
on every node (a shared file system), and lnnode installed on each. Ray is imported only here, and only when a
run asks for it: ``pip install 'lnnode[ray]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["RayNotInstalled", "RayOptions", "WorkerDied", "Workers", "add_ray_arguments", "ray_options", "ray_session"]

LOCAL = "local"
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # paths and small results travel, not volumes: Ray's minimum is 75 MiB
RELEASE_WAIT_S = 10.0  # at most, for the workers' CPUs to come back after a run


class RayNotInstalled(ImportError, ValueError):
    """Ray is not installed. An ImportError (what it is) and a ValueError (a usage error for the CLI)."""


class WorkerDied(RuntimeError):
    """The Ray worker that held a case died (killed, out of memory, crashed) or none was left to take it."""


def import_ray() -> ModuleType:
    """The ``ray`` module, or a RayNotInstalled that says how to install it."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalled("running on Ray needs Ray: pip install 'lnnode[ray]'") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a run goes: ``address`` (module doc); ``workers`` (None: as many as the free resources
    hold); the CPUs and GPUs each worker reserves (its torch uses as many threads as it has CPUs)."""

    address: str = LOCAL
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("--ray: give local, auto or a cluster address (HOST:PORT)")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"--cpus-per-worker must be above 0, got {self.cpus_per_worker:g}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must not be negative, got {self.gpus_per_worker:g}")

    def local_cpus(self) -> int:
        """The CPUs a local Ray offers: what the workers asked for, else every core."""
        if self.workers is None:
            return os.cpu_count() or 1
        return max(1, math.ceil(self.workers * self.cpus_per_worker))


def ray_options(
    address: str | None,
    device: str = "cpu",
    workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
) -> RayOptions | None:
    """The options of a run on Ray (None: ``address`` is None, the run stays in this process). With ``device``
    cuda each worker reserves a GPU by default and uses the one Ray gives it. Checks, before any work, that the
    flags fit together and that Ray is installed."""
    if address is None:
        flags = (("--workers", workers), ("--cpus-per-worker", cpus_per_worker), ("--gpus-per-worker", gpus_per_worker))
        given = [flag for flag, value in flags if value is not None]
        if given:
            raise ValueError(f"{given[0]} needs --ray")
        return None
    cuda = device.startswith("cuda")
    if cuda and device != "cuda":
        raise ValueError(f"with --ray give --device cuda, not {device}: each worker uses the GPU Ray assigns it")
    gpus = (1.0 if cuda else 0.0) if gpus_per_worker is None else gpus_per_worker
    if cuda and gpus <= 0:
        raise ValueError("--device cuda on Ray needs GPUs per worker: --gpus-per-worker above 0")
    options = RayOptions(address, workers, 1.0 if cpus_per_worker is None else cpus_per_worker, gpus)
    import_ray()
    return options


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--ray`` options of ``lnnode infer`` and ``lnnode score`` (read back with :func:`ray_options`)."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        metavar="ADDRESS",
        help="run on Ray, one model copy per worker (needs pip install 'lnnode[ray]'): with no value or 'local' "
        "a Ray of the run's own on this machine (127.0.0.1 only, stopped at the end; a bare --ray must not come "
        "right before SOURCE, which it would take for its value); 'auto' the cluster this machine is part of "
        "(ray start); HOST:PORT or ray://HOST:PORT that cluster, whose nodes must see the images, models and "
        "outputs at the same paths",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Ray workers (default: as many as the free CPUs and GPUs hold, at most one per case)",
    )
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        metavar="C",
        help="CPUs each Ray worker reserves; its torch uses that many threads (default 1)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="G",
        help="GPUs each Ray worker reserves (default 1 with --device cuda, else 0)",
    )


_PROCESS_TOKEN = secrets.token_hex(32)  # one per process: Ray's C++ side reads a token once and keeps it


def _set_local_environ() -> None:
    """What a local Ray, and every process it starts, needs: no usage reporting, and the access token (Ray turns
    token checks on for every local Ray) in the environment, where Ray would otherwise write one to ~/.ray; unless
    the user set up Ray's authentication themselves. Left set for the rest of the process, for that one read."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = _PROCESS_TOKEN


@contextlib.contextmanager
def ray_session(options: RayOptions, verbose: bool = False) -> Iterator[ModuleType]:
    """Ray, connected as ``options`` say, for the block; a Ray started here is stopped after it. A process that
    is connected already (a notebook, a test) keeps its connection as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if options.address == LOCAL:
        _set_local_environ()
        kwargs = dict(address=LOCAL, num_cpus=options.local_cpus(), include_dashboard=False,
                      _node_ip_address="127.0.0.1", object_store_memory=LOCAL_OBJECT_STORE_BYTES)  # fmt: skip
    else:
        kwargs = {"address": options.address}
    # Ray's notice that it checks tokens (which it does here on purpose) says nothing a user must act on
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.WARNING if verbose else logging.ERROR)
    try:
        ray.init(**kwargs, **quiet)
    except ConnectionError as e:
        hint = "start one with ray start --head, or give --ray alone for a Ray of this run's own"
        raise ConnectionError(f"cannot reach a Ray cluster at {options.address!r} ({hint}): {e}") from None
    finally:
        notice.setLevel(level)
    try:
        yield ray
    finally:
        ray.shutdown()


class _Worker:
    """A Ray worker's copy of the models: ``make()`` (called in the worker, so the models load where they are
    used) builds the object whose ``run(*item)`` does one item."""

    def __init__(self, make: Callable[[], Any], threads: int):
        import torch

        torch.set_num_threads(threads)  # the worker's share of the node's cores, not all of them
        self._runner = make()

    def run(self, *item: Any) -> Any:
        return self._runner.run(*item)


def _worker_count(ray: ModuleType, options: RayOptions, items: int) -> int:
    """Workers to start: the ones asked for (default: as many as fit), no more than fit in the free resources
    now (a worker that never starts would hold its case forever) nor than there are items."""
    free = ray.available_resources()
    cpus, gpus = free.get("CPU", 0.0), free.get("GPU", 0.0)
    fit = int(cpus // options.cpus_per_worker)
    if options.gpus_per_worker:
        fit = min(fit, int(gpus // options.gpus_per_worker))
    if fit < 1:
        raise ValueError(
            f"the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s) free; a worker needs "
            f"{options.cpus_per_worker:g} CPU(s) and {options.gpus_per_worker:g} GPU(s)"
        )
    if options.workers and options.workers > fit:
        logger.warning(f"{options.workers} Ray workers asked for, room for {fit} now: starting {fit}")
    return max(1, min(options.workers or fit, fit, items))


class Workers:
    """Ray workers for one run: ``with Workers(options, make, n) as w: for item, value in w.map(items)``.

    Starts (or joins) Ray, then ``count`` workers each holding ``make()``; on leaving, the workers end and a Ray
    started here stops. ``make`` travels to the workers pickled (``functools.partial`` of a class of an installed
    module: the workers import it).
    """

    def __init__(self, options: RayOptions, make: Callable[[], Any], items: int, verbose: bool = False):
        self.options, self._make, self._items, self._verbose = options, make, items, verbose
        self.count = 0
        self._actors: list[Any] = []
        self._free_cpus = 0.0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Workers:
        with self._stack:
            ray = self._ray = self._stack.enter_context(ray_session(self.options, self._verbose))
            self._free_cpus = ray.available_resources().get("CPU", 0.0)
            self.count = _worker_count(ray, self.options, self._items)
            remote = ray.remote(_Worker).options(
                num_cpus=self.options.cpus_per_worker, num_gpus=self.options.gpus_per_worker
            )
            threads = max(1, int(self.options.cpus_per_worker))
            self._actors = [remote.remote(self._make, threads) for _ in range(self.count)]
            self._stack = self._stack.pop_all()  # started: keep it until __exit__
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            for actor in self._actors:
                self._ray.kill(actor)  # frees the cluster's resources now, even where the connection stays
            self._actors = []
            # a kill takes effect a moment later: a next run on the same connection must find the CPUs free
            deadline = time.monotonic() + RELEASE_WAIT_S
            while self._ray.available_resources().get("CPU", 0.0) < self._free_cpus and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:  # whatever failed above (a lost connection, Ctrl-C), a Ray started for the run stops
            self._stack.close()

    def map(self, items: Sequence[tuple]) -> Iterator[tuple[tuple, Any]]:
        """``(item, value)`` for each item, as each finishes: the value of ``run(*item)``, or the exception it
        raised; one item per worker at a time (a worker that dies takes only that one with it)."""
        ray = self._ray
        waiting = list(reversed(items))
        idle = list(self._actors)
        running: dict[Any, tuple[Any, tuple]] = {}
        while waiting or running:
            while idle and waiting:
                actor, item = idle.pop(), waiting.pop()
                running[actor.run.remote(*item)] = (actor, item)
            if not running:  # every worker died
                self._actors = []
                yield from ((item, WorkerDied("no Ray worker left: every one died")) for item in reversed(waiting))
                return
            [done], _ = ray.wait(list(running), num_returns=1)
            actor, item = running.pop(done)
            try:
                value = ray.get(done)
            except ray.exceptions.RayActorError as e:
                self._actors.remove(actor)
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                value = WorkerDied(f"its Ray worker died ({first})")
            except ray.exceptions.RayTaskError as e:  # a bug: the work reports its own failures
                idle.append(actor)
                value = e.cause if isinstance(e.cause, Exception) else e
            except ray.exceptions.RayError as e:  # Ray lost the call (its object, its memory): the worker goes on
                idle.append(actor)
                value = e
            else:
                idle.append(actor)
            yield item, value
