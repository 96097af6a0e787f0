"""``fedmm simulate``: the Flower Simulation Engine on Ray, in this process, with explicit resources;
or the ``inline`` engine (:mod:`fedmm.inline`), every client in this process, one after the other.

Why one module of this size: the one entry of `fedmm simulate` for its three engines (Ray in-
process, a Ray cluster, inline), with the signal handling and resume they share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmm.checkpoint import Checkpoint
from fedmm.config import RunConfig
from fedmm.delivery import fast_delivery
from fedmm.raystop import ActorReaper
from fedmm.results import prepare_out_dir
from fedmm.runlock import directory_lock
from fedmm.server.loop import RoundCallback, restore_state, run_federation
from fedmm.server.plan import Plan, build_strategy, prepare
from fedmm.server.resume import resume_checkpoint
from fedmm.server.stopping import Interrupted, StopRequest

log = logging.getLogger("fedmm")


def _drop_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    """fedmm simulate uses ``run_simulation`` on purpose (in-process, explicit resources); its
    deprecation notice in favour of ``flwr run`` would only confuse users, so it is not shown."""
    return "run_simulation" not in str(record.msg) and "deprecated feature" not in str(record.msg).lower()


#: The signals that stop a simulation (Ctrl-C, ``kill``); the run's status becomes ``interrupted``.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[Callable[[], None]]:
    """While the body runs, SIGINT and SIGTERM set ``stop`` instead of raising ``KeyboardInterrupt``
    in whichever thread the signal lands (``run_simulation`` runs the Ray backend in the main thread
    and the server loop in another). Further signals are ignored while the run shuts down; the
    previous handlers come back afterwards. Outside the main thread (no handlers there) it does
    nothing.

    Yields a function that installs the handlers again: ``ray.init`` replaces SIGTERM's with its own
    (``sys.exit`` in the main thread, then a C++ handler that aborts the process).

    Parameters
    ----------
    stop:
        The request the round loop watches (:func:`fedmm.server.loop.run_federation`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(signum: int, frame: object) -> None:
        stop.request(signum)
        if getattr(stop, "interruptible", False):  # the inline engine's client work, in this thread
            stop.interruptible = False
            raise Interrupted(signum)

    def install() -> dict[int, Any]:
        return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}

    previous = install()
    try:
        yield install
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def start_ray(backend_config: dict[str, Any]) -> None:
    """Start Ray in this process, or join the cluster at ``init_args["address"]``, exactly as
    Flower's Ray backend would (it then finds Ray running and uses it), so that the caller can put
    its signal handlers back after ``ray.init``.

    Parameters
    ----------
    backend_config:
        The ``backend_config`` passed to ``run_simulation`` (``init_args``).

    Raises ``ValueError`` naming the address when no Ray cluster answers there.
    """
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    address = backend_config.get("init_args", {}).get("address")
    if address is not None:
        _check_answers(address)
    try:
        RayBackend(backend_config)  # initialises Ray; its actor pool is only built by run_simulation's
    except (ConnectionError, TimeoutError, RuntimeError) as err:
        if address is None:
            raise
        raise _no_cluster(address, str(err).splitlines()[0]) from None


#: Seconds fedmm waits for a Ray cluster at ``ray-address`` to answer before it gives up.
RAY_ANSWER_SECONDS = 10.0


def _check_answers(address: str, seconds: float = RAY_ANSWER_SECONDS) -> None:
    """Raise the ``ray-address`` error within about ``seconds`` when no Ray cluster answers at a
    ``host:port`` (or ``ray://host:port``) address: nothing listens there, or a listener accepts the
    connection but never answers as Ray's gRPC server would (``ray.init`` would retry for minutes
    either way). ``auto`` is left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as err:
        raise _no_cluster(address, err.strerror or str(err)) from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # a TLS cluster: the plain gRPC handshake below cannot speak for it
    import grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=seconds)
    except grpc.FutureTimeoutError:
        raise _no_cluster(
            address, f"a process accepts connections there but did not answer as a Ray cluster within {seconds:g} s"
        ) from None
    finally:
        channel.close()


def _no_cluster(address: str, why: str) -> ValueError:
    return ValueError(
        f"config key 'ray-address' = {address!r}: no Ray cluster answers there ({why}); start its head with "
        "`ray start --head --port 6379` (and `ray start --address <head>:6379` on the other machines), or leave "
        "ray-address empty for a local Ray instance"
    )


#: Seconds the simulation engine gets, after a stop request and once the results are final, to end
#: by itself before the clients still training are killed (:class:`fedmm.raystop.ActorReaper`).
STOP_GRACE_SECONDS = 0.5


def _reap_after_stop(stop: StopRequest, final: threading.Event, reaper: ActorReaper) -> None:
    """Start a watcher that, once a stop was requested and the server loop has ended (results
    final), waits :data:`STOP_GRACE_SECONDS` and kills the engine's actors, so that Ctrl-C does not
    wait for a client's training to finish."""

    def watch() -> None:
        while not (stop.is_set() and final.is_set()):
            if final.wait(0.1) and not stop.is_set():
                return  # the run ended without a stop: nothing to cut short
        time.sleep(STOP_GRACE_SECONDS)
        reaper.kill_actors()

    threading.Thread(target=watch, name="fedmm-stop-reaper", daemon=True).start()


def client_resources(run: RunConfig, cluster_gpus: float | None = None) -> dict[str, float]:
    """Ray resources of one simulated client; ``client-num-gpus=-1`` means 0.5 GPU when GPUs are
    present (two clients share a GPU) and none otherwise.

    Parameters
    ----------
    run:
        ``client-num-cpus``, ``client-num-gpus`` and ``device``.
    cluster_gpus:
        The GPUs of the Ray cluster the run joined (``ray-address``); ``None``: look for CUDA on
        this machine.
    """
    gpus = run.client_num_gpus
    if gpus < 0:
        if cluster_gpus is None:
            import torch

            present = torch.cuda.is_available()
        else:
            present = cluster_gpus > 0
        gpus = 0.5 if (run.device != "cpu" and present) else 0.0
    return {"num_cpus": run.client_num_cpus, "num_gpus": gpus}


def _cluster_text(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU") if k in resources or k == "CPU")


def simulate(
    run: RunConfig,
    out_dir: str | Path | None,
    *,
    overwrite: bool = False,
    on_round: RoundCallback | None = None,
    plan: Plan | None = None,
    resume: bool = False,
    roster_from_scenario: bool = True,
) -> dict[str, Any]:
    """Validate ``run``, then simulate it on its engine (``engine``: Ray, or ``inline`` in this
    process) and write results to ``out_dir``.

    Parameters
    ----------
    run:
        The resolved configuration.
    out_dir:
        Results directory; ``None`` writes nothing (benchmarks).
    overwrite:
        Replace the results of an earlier run in ``out_dir``.
    on_round:
        Called with each round's results row.
    plan:
        An already prepared plan for ``run`` (skips preparing it again).
    resume:
        Continue the run whose checkpoint is in ``out_dir`` (see :func:`fedmm.server.resume.resume_config`).
    roster_from_scenario:
        Register the server's roster from the scenario (every client's partition, modalities and
        size), with no ``query`` message per node; ``False``: discover the nodes as a deployment
        does (benchmarks compare the two).

    A SIGINT (Ctrl-C) or SIGTERM stops the run within seconds: the round under way is dropped,
    ``summary.json`` gets status ``interrupted``, Ray shuts down and
    :class:`fedmm.server.stopping.Interrupted` is raised (``--resume`` continues the run).
    """
    # one process per output directory, for the whole run (fedmm.runlock; re-entrant: the CLI holds it already)
    with directory_lock(out_dir) if out_dir is not None else contextlib.nullcontext():
        if plan is not None and out_dir is not None:  # checked again under the lock: a run that just ended there
            prepare_out_dir(out_dir, overwrite=overwrite or resume)
        plan = plan or prepare(run, out_dir, overwrite=overwrite, resume=resume)
        # the simulation's server knows the scenario: its roster is registered from it, no discovery
        plan = dataclasses.replace(plan, roster_from_scenario=roster_from_scenario)
        checkpoint = resume_checkpoint(out_dir, run, plan.model) if resume and out_dir is not None else None
        if checkpoint is not None:  # garbage state values are refused here, before Ray starts
            restore_state(plan, build_strategy(plan), checkpoint)
        stop = StopRequest()
        if run.engine == "inline":
            return _simulate_inline(plan, on_round, checkpoint, stop)
        return _simulate_on_ray(plan, on_round, checkpoint, stop)


def _simulate_inline(
    plan: Plan, on_round: RoundCallback | None, checkpoint: Checkpoint | None, stop: StopRequest
) -> dict[str, Any]:
    from fedmm.inline import InlineGrid, server_identity

    with stop_on_signals(stop), server_identity():
        return run_federation(
            InlineGrid(len(plan.scenario.partitions), stop), plan, on_round, resume=checkpoint, stop=stop
        )


def _simulate_on_ray(
    plan: Plan, on_round: RoundCallback | None, checkpoint: Checkpoint | None, stop: StopRequest
) -> dict[str, Any]:
    # Imported here so that `fedmm datasets` and config errors do not pay for Ray's import.
    import ray
    from flwr.simulation import run_simulation

    from fedmm.clients.app import app as client_app

    run = plan.run
    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    reaper = ActorReaper()
    final = threading.Event()  # the server loop has ended: its results (or the interrupted summary) are written

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            outcome["summary"] = run_federation(grid, plan, on_round, resume=checkpoint, stop=stop)
        except Interrupted as err:
            # returned, not raised: Flower waits 3 s for the context of a ServerApp that raised
            # before it shuts down; it is raised again once run_simulation has returned
            outcome["interrupted"] = err
        finally:
            final.set()

    logging.getLogger("flwr").addFilter(_drop_run_simulation_deprecation)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    if run.ray_address:
        init_args["address"] = run.ray_address
    else:
        resources = client_resources(run)
        init_args.update(num_cpus=os.cpu_count() or 1, num_gpus=1 if resources["num_gpus"] > 0 else 0)
    backend_config: dict[str, Any] = {"init_args": init_args}
    with stop_on_signals(stop) as reinstall_handlers:
        try:
            start_ray(backend_config)
            reinstall_handlers()
            # on a cluster, the clients' share of a GPU follows the cluster's GPUs, not this machine's
            backend_config["client_resources"] = client_resources(
                run, ray.cluster_resources().get("GPU", 0.0) if run.ray_address else None
            )
            if run.ray_address:
                log.info("joined the Ray cluster at %s: %s", run.ray_address, _cluster_text(ray.cluster_resources()))
            # the server thread's Interrupted comes back out of run_simulation after Ray's shutdown;
            # after a stop, the clients still training are killed once the results are final
            _reap_after_stop(stop, final, reaper)
            with fast_delivery(), reaper.recording():
                run_simulation(
                    server_app=server_app,
                    client_app=client_app,
                    num_supernodes=len(plan.scenario.partitions),
                    backend_config=backend_config,
                )
        finally:
            reaper.closed = True
            final.set()  # ends the watcher of _reap_after_stop also when the server never started
            if ray.is_initialized():  # run_simulation failed before its backend took Ray over
                ray.shutdown()
    if "interrupted" in outcome:
        raise outcome["interrupted"]
    if "summary" not in outcome:
        raise RuntimeError("the simulation ended before the server finished; see the log above")
    return outcome["summary"]
