"""The Dask cluster a stage runs on (``preprocess.engine: dask``): the scheduler at ``DASK_SCHEDULER_ADDRESS`` or,
when it is unset, a ``LocalCluster`` of worker processes listening on 127.0.0.1 only, started for the stage and stopped
after it (:func:`dask_client`). The preprocess, train and evaluate stages and `make score` share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import CancelledError
from typing import Any

from dask.utils import parse_bytes

from segmentation.engines.dask import parts
from segmentation.engines.dask.params import SCHEDULER_ENV as SCHEDULER_ENV  # re-exported
from segmentation.engines.dask.params import DaskParams, scheduler_address
from segmentation.errors import UserError

LOOPBACK = "127.0.0.1"  # a LocalCluster listens here only
START_TIMEOUT_S = 120  # for each LocalCluster worker to start (or restart): seconds on a loaded machine
CLOSE_TIMEOUT_S = 30  # bounded wait for the client and the LocalCluster to close


# -- the cluster ----------------------------------------------------------------------------------------------------
def local_workers(params: DaskParams) -> int:
    """Worker processes of a LocalCluster: ``n_workers``, or as many as the cores allow ``threads_per_worker``."""
    if params.n_workers is not None:
        return params.n_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // params.threads_per_worker)


@contextlib.contextmanager
def dask_client(params: DaskParams) -> Iterator[Any]:
    """A ``distributed.Client`` for the stage, closed on exit (with its LocalCluster, if one was started).

    A task whose workers kept dying (Dask retries it on another worker up to its ``allowed-failures``), or a
    scheduler that went away, is one line: the stage then writes nothing, its earlier outputs stay.

    With ``DASK_SCHEDULER_ADDRESS`` set, the scheduler there (connected and answering within ``connect_timeout``
    seconds, else a one-line error). Otherwise a LocalCluster of ``n_workers`` processes with ``threads_per_worker``
    threads and ``memory_limit`` each (each started within :data:`START_TIMEOUT_S`, else one line), every server of
    it (scheduler, workers, nannies, the dashboard) on 127.0.0.1 only.
    """
    from distributed import KilledWorker

    with _client(params) as client:
        try:
            client.run(parts.release_memory, on_error="ignore")  # what an earlier stage left on the workers
            yield client
        except KilledWorker as exc:
            raise UserError(
                f"Dask: the workers running task {exc.task!r} died {exc.allowed_failures + 1} times (the last: "
                f"{exc.last_worker.address}); earlier outputs are unchanged: check the workers' logs and memory "
                "(preprocess.dask.memory_limit), then run again"
            ) from None
        except CancelledError:  # distributed's FutureCancelledError: the scheduler lost the work
            raise UserError(
                "Dask: the scheduler cancelled the stage's work (scheduler or workers gone?); earlier outputs are "
                "unchanged: check the cluster, then run again"
            ) from None


@contextlib.contextmanager
def _client(params: DaskParams) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    address = scheduler_address()
    if address:
        try:
            _handshake(address, params.connect_timeout)
            # the default scheduler while it lasts: dask-ml's fits compute on it
            client = Client(address, timeout=params.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise UserError(
                f"{SCHEDULER_ENV}={address}: cannot reach the Dask scheduler within {params.connect_timeout:g} s "
                f"({type(exc).__name__}); start it, fix the address or unset it for a local cluster"
            ) from None
        try:
            yield client
        finally:
            _close(client)
        return
    memory = params.memory_limit if params.memory_limit == "auto" else parse_bytes(params.memory_limit)
    workers = local_workers(params)
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=params.threads_per_worker,
            memory_limit=memory,
            processes=True,
            host=LOOPBACK,
            # The scheduler's HTTP server (dashboard, health) on a free loopback port. Not None: in distributed
            # 2026.8 None means the default port 8787 (a second cluster then warns on stderr), and dashboard=False in
            # scheduler_kwargs binds it on every interface.
            dashboard_address=f"{LOOPBACK}:0",
            # A stage's stderr is its progress and its one error line: a worker logs a task's UserError as an ERROR.
            silence_logs=logging.CRITICAL,
            death_timeout=START_TIMEOUT_S,  # without it a worker that never starts is waited for for ever
        )
    except Exception as exc:  # distributed's start timeout is an AssertionError, a worker's crash a RuntimeError
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        logging.getLogger("distributed").setLevel(logging.CRITICAL)  # at exit it logs the stuck worker's reaping
        raise UserError(
            f"Dask: the LocalCluster's {workers} worker(s) did not start within {START_TIMEOUT_S} s ({reason}); "
            "check the machine's memory and load (preprocess.dask.n_workers), then run again"
        ) from None
    try:
        client = Client(cluster)  # the default scheduler while it lasts: dask-ml's fits compute on it
        try:
            yield client
        finally:
            _close(client)
    finally:
        _close(cluster)


def _handshake(address: str, timeout: float) -> None:
    """Connect to the scheduler and read its handshake within ``timeout`` seconds: ``Client`` bounds the TCP connect
    only, then waits for the handshake for ever (distributed 2026.8) on a port that accepts and never answers."""
    from distributed.comm import connect

    async def greet() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
        await comm.close()

    asyncio.run(greet())


def _close(closable: Any) -> None:
    """Close a client or a LocalCluster within :data:`CLOSE_TIMEOUT_S`; a failure to close never replaces the
    stage's result or its one error line. (Seen at load ~10: after a ``KilledWorker`` the nanny was still restarting
    the worker, and ``LocalCluster.close`` raised multiprocessing's "can only join a started process".)"""
    with contextlib.suppress(Exception):
        closable.close(timeout=CLOSE_TIMEOUT_S)
