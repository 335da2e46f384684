"""Sweeps on a Dask cluster (``distributed``): ``ksmlab sweep --scheduler SPEC``.

``SPEC`` is either the address of a running scheduler (``tcp://host:port``; also ``tls://``,
``ws://``, ``wss://``, ``ucx://`` as ``distributed`` knows them), reached with
``distributed.Client(address)``, or ``local:N``: a ``distributed.LocalCluster`` of N worker
processes (one thread each) on 127.0.0.1, started for the sweep and stopped after it. Without
``--scheduler`` the sweep runs on the embedded local process pool.

Each run is one Dask task (:func:`app.whatif.sweep.run_work`, keyed
``ksmlab-sweep-<point key>``) that is handed the point, the scenario's content, the costs
and ``max_passes``, so the workers need the ``ksmlab`` code (``app.whatif.sweep`` and
``sim``) but not the presets. Before the sweep, every worker's code fingerprint
(:func:`app.whatif.sweep.code_fingerprint`) is compared with this process's; a worker with
other code (or without ksmlab) is refused, and so is any result that comes back from one
that joined later. Results are therefore the same, bit for bit, as on the local pool.

``distributed`` is imported only here, and only when ``--scheduler`` is given.
"""

from __future__ import annotations

import asyncio
import re
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .sweep import Done, Runner, RunnerError, Work, code_fingerprint, run_work

#: how long to wait for the scheduler (and, for local:N, for the workers)
CONNECT_TIMEOUT_S = 10.0
_ADDRESS = re.compile(r"^(tcp|tls|ws|wss|ucx)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_LOCAL = re.compile(r"^local:(\d+)$")
MAX_LOCAL_WORKERS = 256


class SchedulerError(Exception):
    """The cluster cannot be used: bad address, unreachable, no worker, other code."""


def parse_scheduler(spec: str) -> tuple[str, str | int]:
    """``("local", N)`` or ``("address", "tcp://host:port")``; ValueError with the reason."""
    spec = spec.strip()
    local = _LOCAL.fullmatch(spec)
    if local:
        n = int(local.group(1))
        if not 1 <= n <= MAX_LOCAL_WORKERS:
            raise ValueError(f"--scheduler local:N needs 1 <= N <= {MAX_LOCAL_WORKERS}")
        return "local", n
    m = _ADDRESS.fullmatch(spec)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ValueError(
            f"bad --scheduler {spec!r}: expected tcp://HOST:PORT (the Dask scheduler's "
            "address) or local:N (a local Dask cluster of N worker processes)"
        )
    return "address", spec


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextmanager
def dask_runner(spec: str, timeout: float = CONNECT_TIMEOUT_S) -> Iterator[tuple[Runner, str]]:
    """A runner on the Dask cluster ``spec`` names, and a description of it (for the report
    line); raises :class:`SchedulerError` with a one-line reason if it cannot be used."""
    kind, value = parse_scheduler(spec)
    import distributed  # heavy: only when a cluster is asked for

    local_cluster: Any = distributed.LocalCluster  # (untyped)
    client_class: Any = distributed.Client

    cluster: Any = None
    client: Any = None
    try:
        try:
            if kind == "local":
                with warnings.catch_warnings():  # "port 8787 in use": it takes another
                    warnings.filterwarnings("ignore", "Port .* is already in use", UserWarning)
                    cluster = local_cluster(
                        n_workers=int(value),
                        threads_per_worker=1,  # pure Python: one run per process
                        processes=True,
                        host="127.0.0.1",
                        protocol="tcp",
                        dashboard_address=None,
                        silence_logs=40,  # errors only: stderr carries the progress line
                    )
                client = client_class(cluster, timeout=timeout)
            else:
                _probe(str(value), timeout)
                client = client_class(str(value), timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerError(
                f"cannot reach the Dask scheduler {spec}: {_reason(exc)}"
            ) from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise SchedulerError(
                f"the Dask scheduler {spec} has no worker: {_reason(exc)}"
            ) from None
        _check_workers(client, spec)
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        where = (
            f"a local Dask cluster of {workers} workers"
            if kind == "local"
            else f"the Dask cluster at {value} ({workers} workers)"
        )
        yield _runner(client, distributed.as_completed), where
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _probe(address: str, timeout: float) -> None:
    """Ask ``address`` who it is, within ``timeout`` whatever listens there.

    ``distributed.Client(address, timeout=...)`` bounds the TCP connection, not the
    handshake: pointed at a server that is not a Dask scheduler (an HTTP server, say) it
    waits for ever. This asks for the ``identity`` over one comm, with a deadline on the
    whole exchange, and wants a ``Scheduler`` to answer.
    """
    from distributed.comm import core

    connect: Any = core.connect  # (untyped)

    async def ask() -> Any:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(ask(), timeout))
    except OSError as exc:  # refused, unresolvable, or (TimeoutError) no answer in time
        why = _reason(exc) if str(exc) else f"no answer within {timeout:g} s"
        raise SchedulerError(f"cannot reach the Dask scheduler {address}: {why}") from None
    except Exception as exc:  # noqa: BLE001 (whatever a foreign server's bytes make of it)
        raise SchedulerError(f"{address} is not a Dask scheduler: {_reason(exc)}") from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise SchedulerError(f"{address} is not a Dask scheduler (it answered {reply!r:.80})")


def _check_workers(client: Any, spec: str) -> None:
    mine = code_fingerprint()
    try:
        theirs: dict[str, str] = client.run(code_fingerprint)
    except Exception as exc:  # noqa: BLE001 (a worker without ksmlab: ModuleNotFoundError...)
        raise SchedulerError(
            f"the workers of {spec} cannot run ksmlab ({_reason(exc)}): install the same "
            "ksmlab on every worker (docs/sweeps.md)"
        ) from None
    other = sorted(addr for addr, fp in theirs.items() if fp != mine)
    if other:
        raise SchedulerError(
            f"{len(other)} worker(s) of {spec} run other ksmlab code than this process "
            f"(first: {other[0]}): install the same version on every worker (docs/sweeps.md)"
        )


def _runner(client: Any, as_completed: Any) -> Runner:
    def run(work: Sequence[Work]) -> Iterator[Done]:
        if not work:
            return
        token = uuid.uuid4().hex[:12]
        keys = [f"ksmlab-sweep-{item[1].preset}-{token}-{item[0]}" for item in work]
        futures = client.map(run_work, work, key=keys, pure=False)
        try:
            for fut in as_completed(futures):
                try:
                    done: Done = fut.result()
                except (Exception, asyncio.CancelledError) as exc:  # lost scheduler, ...
                    raise RunnerError(f"the Dask cluster failed: {_reason(exc)}") from exc
                fut.release()
                yield done
        finally:  # stopped early (an error, Ctrl-C): drop what is still queued
            if client.status == "running":
                client.cancel(futures)

    return run
