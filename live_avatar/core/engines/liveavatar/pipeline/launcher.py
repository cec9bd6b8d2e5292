"""Starting the pipeline's ranks: one process per device, started by rank 0 itself (the ``avatar`` command),
or a world started by torchrun (its RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT / LOCAL_RANK).

Rank 0 spawns ranks 1..N-1 as ``python -m ...pipeline.worker`` with torchrun's variables plus
``AVATAR_PIPELINE`` (JSON: engine options, plan request, torch threads), joins the gloo group and waits for
every rank's ``ready``. It watches its children: a rank that exits ends every wait with a
:class:`PipelineError` that names it, and closing the engine stops them all (terminate, then kill).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..options import EngineConfigError, LiveAvatarOptions
from .plan import PipelinePlan, plan_pipeline
from .transport import Channel, PipelineError

ENV_CONFIG = "AVATAR_PIPELINE"
# gloo's own timeout covers the rendezvous; the receiver thread waits forever (deadlines live in Channel)
GROUP_TIMEOUT = datetime.timedelta(days=7)
RENDEZVOUS_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class WorkerEnvironment:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    options: dict[str, Any]
    threads: int

    @classmethod
    def from_environ(cls) -> WorkerEnvironment:
        config = json.loads(os.environ.get(ENV_CONFIG, "{}"))
        return cls(
            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
            master_addr=os.environ.get("MASTER_ADDR", "127.0.0.1"), master_port=int(os.environ["MASTER_PORT"]),
            options=config.get("options", {}), threads=int(config.get("threads", 0)),
        )


def make_plan(opts: LiveAvatarOptions, num_steps: int) -> PipelinePlan:
    return plan_pipeline(opts.num_gpus_dit, num_steps, vae_gpu=opts.vae_gpu)


def rank_device(env: WorkerEnvironment, opts: LiveAvatarOptions) -> tuple[torch.device, torch.dtype]:
    """cuda:LOCAL_RANK on GPUs (cuda:0 for every rank with ``share_device``: the one-GPU bench mode), else CPU."""
    from ..options import resolve_device, resolve_dtype

    base = resolve_device(opts.device)
    if base.type == "cuda":
        base = torch.device("cuda", (base.index or 0) if opts.share_device else env.local_rank)
        torch.cuda.set_device(base)
    return base, resolve_dtype(opts.dtype, base)


def _join_group(env: WorkerEnvironment) -> None:
    if env.threads > 0:  # the same intra-op thread count on every rank: the same float sums as one process
        torch.set_num_threads(env.threads)
    # under torchrun the agent hosts the store at MASTER_PORT: env:// connects to it instead of serving it
    init = "env://" if "TORCHELASTIC_RUN_ID" in os.environ else f"tcp://{env.master_addr}:{env.master_port}"
    dist.init_process_group("gloo", init_method=init, rank=env.rank, world_size=env.world_size, timeout=GROUP_TIMEOUT)


def join(env: WorkerEnvironment) -> tuple[Channel, PipelinePlan]:
    """A worker joins the group; it gives up when its parent (rank 0 or torchrun) is gone."""
    _join_group(env)
    parent = os.getppid()
    channel = Channel(env.rank, alive=lambda: None if os.getppid() == parent else "the parent process is gone")
    opts = LiveAvatarOptions.from_kwargs(env.options)
    from ..config import ModelConfig, load_model_config

    streaming = (load_model_config(opts.config) if opts.config else ModelConfig()).streaming
    return channel, make_plan(opts, streaming.num_steps)


def _config(opts: LiveAvatarOptions, world_size: int) -> dict:
    return {"options": {k: v for k, v in dataclasses.asdict(opts).items() if v is not None},
            "threads": rank_threads(opts, world_size)}


def rank_threads(opts: LiveAvatarOptions, world_size: int) -> int:
    """Intra-op CPU threads of every rank process. CPU ranks: rank 0's count on each (the same float sums as
    one process). GPU ranks: this process's count split between the ranks, as torchrun does (it defaults to
    one thread a process): a GPU rank runs only small CPU ops (RoPE tables, copies), and N processes with a
    thread per core each oversubscribe the host, which stalls the thread that feeds the GPU. Suspected
    (not yet measured) in the 2-GPU run where each rank's steps took twice their isolated time once both
    ranks computed at once."""
    threads = torch.get_num_threads()
    if opts.device.startswith("cpu") or not torch.cuda.is_available():
        return threads
    return max(1, threads // world_size)


def is_torchrun_worker() -> bool:
    """This process is a torchrun rank other than 0: it serves rank 0's pipeline, nothing else."""
    return "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("RANK", "0")) > 0


def serve_if_torchrun_worker(opts: LiveAvatarOptions) -> None:
    """Under torchrun every process runs the command; ranks other than 0 become workers here, before the
    engine loads anything (a worker loads only its own parts), and leave the process when rank 0 is done."""
    if not is_torchrun_worker():
        return
    os.environ[ENV_CONFIG] = json.dumps(_config(opts, int(os.environ.get("WORLD_SIZE", "1"))))
    from .worker import worker_main

    code = worker_main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankGroup:
    """Rank 0's view of the world: the channel, the plan, the children it started, and their ``ready``."""

    def __init__(self, opts: LiveAvatarOptions, plan: PipelinePlan) -> None:
        self.opts, self.plan = opts, plan
        self.children: dict[int, subprocess.Popen] = {}
        self.ready: dict[int, dict] = {}
        self.torchrun = "WORLD_SIZE" in os.environ and ENV_CONFIG not in os.environ
        config = _config(opts, plan.world_size)
        if self.torchrun:
            env = WorkerEnvironment.from_environ()
            env = dataclasses.replace(env, options=config["options"], threads=config["threads"])
            if env.world_size != plan.world_size:
                raise EngineConfigError(f"torchrun started {env.world_size} processes; --num_gpus_dit "
                                        f"{opts.num_gpus_dit}{' + --vae_gpu' if opts.vae_gpu else ''} needs {plan.world_size}")
            if env.rank != 0:
                serve_if_torchrun_worker(opts)
        else:
            port = _free_port()
            env = WorkerEnvironment(0, plan.world_size, 0, "127.0.0.1", port, config["options"], config["threads"])
            for rank in range(1, plan.world_size):
                child_env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(plan.world_size), "LOCAL_RANK": str(rank),
                             "MASTER_ADDR": env.master_addr, "MASTER_PORT": str(port), ENV_CONFIG: json.dumps(config)}
                self.children[rank] = subprocess.Popen(
                    [sys.executable, "-m", "live_avatar.core.engines.liveavatar.pipeline.worker"], env=child_env)
        try:
            self._rendezvous(env)
            self.channel = Channel(0, alive=self.first_dead)
            deadline = time.monotonic() + opts.pipeline_timeout_s * 5  # loading 14B weights takes a while
            # ranks sharing one device load one after another: 14B weights are briefly held twice while loading
            for rank in range(1, plan.world_size):
                self.channel.send(rank, {"kind": "load"})
                if opts.share_device:
                    self._wait_ready(deadline)
            while len(self.ready) < plan.world_size - 1:
                self._wait_ready(deadline)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, deadline: float) -> None:
        message = self.channel.wait_for(lambda m: m.body["kind"] in ("ready", "failed"),
                                        max(1.0, deadline - time.monotonic()), "the ranks to load their models")
        check_failed(message.body)
        self.ready[message.body["rank"]] = message.body

    def _rendezvous(self, env: WorkerEnvironment) -> None:
        # init_process_group blocks until every rank joined: run it with the children watched
        import threading

        error: list[BaseException] = []

        def join_group() -> None:
            try:
                _join_group(env)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
                error.append(exc)

        thread = threading.Thread(target=join_group, daemon=True)
        thread.start()
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
        while thread.is_alive():
            thread.join(0.1)
            gone = self.first_dead()
            if gone or time.monotonic() > deadline:
                raise PipelineError(f"the pipeline ranks did not start: {gone or 'rendezvous timed out'}")
        if error:
            raise PipelineError(f"the pipeline ranks did not start: {error[0]}")

    def first_dead(self) -> str | None:
        for rank, child in self.children.items():
            code = child.poll()
            if code is not None:
                return f"rank {rank} (pid {child.pid}) exited with status {code}"
        return None

    def close(self) -> None:
        """Ask every rank to leave, then make sure they did (bounded)."""
        channel = getattr(self, "channel", None)
        if channel is not None and not self.first_dead():
            for rank in range(1, self.plan.world_size):
                try:
                    channel.send(rank, {"kind": "shutdown"})
                except PipelineError:
                    break
        deadline = time.monotonic() + 10.0
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.terminate()
        for child in self.children.values():
            try:
                child.wait(5.0)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()


def check_failed(body: dict) -> None:
    if body.get("kind") == "failed":
        raise PipelineError(f"pipeline rank {body['rank']} failed: {body['error']}")
