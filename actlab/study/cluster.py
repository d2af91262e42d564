"""A study across a Ray cluster: shards of members on Ray workers, one driver, one run directory.

The members of each depth are split into **shards** of whole seeds (every activation and lr
of a seed), each one stacked model trained by `actlab.engine.trainer.train` on one Ray worker, the
same entry point a local run uses. A member's initial weights, batch order and dropout masks
depend on its seed alone, and a shard of whole seeds keeps the shape of every GEMM of its
members, so a study gives the same numbers on 1 or N shards (see docs/ray.md, "The same
numbers", for the exceptions measured).

- Shards run as Ray streaming-generator tasks, one task per checkpoint interval
  (``checkpoint_every`` epochs): each yields every epoch's metrics and diagnostics rows as
  soon as the epoch ends, and its last epoch also carries the shard's engine state.
- The driver (this process) is the only writer of the run directory (actlab.study.store): it
  buffers rows until every shard has finished an epoch, appends them in member order (so
  metrics.csv reads exactly as a local run's), and after a checkpoint interval writes one
  checkpoint.pt holding every shard's state. No shared filesystem is needed.
- A worker (or node) that dies is retried by Ray (``max_retries``): the task restarts from
  the state it was given, the shard's last checkpoint, and Ray drops the epochs it had
  already streamed (a replay of a deterministic generator), so nothing is lost or doubled.
  A killed driver is rerun like any `actlab compare`: it resumes every shard from the
  checkpoint in the run directory.
- What the cluster lacks (Ray itself, a GPU, CPUs or memory for a shard) is one line
  before any work starts.

Ray is imported only here, and only when asked for (``pip install "actlab[ray]"``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from actlab.config import ExperimentConfig, members_for
from actlab.engine.batches import DeviceData
from actlab.engine.results import EpochResult
from actlab.engine.trainer import resolve_device, train
from actlab.errors import ActlabError, ClusterError, ConfigError, RunDirError
from actlab.study import store
from actlab.study.callbacks import StudyCallback, callback_of
from actlab.study.driver import StudyResult, load_study_dataset, open_study_dir, run_depths
from actlab.study.resume import ResumePoint

INSTALL_HINT = 'pip install "actlab[ray]"'
MAX_RETRIES = 3  # Ray retries of a shard's task after its worker or node dies


# --- shards -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Whole seeds of one depth, trained as one stacked model on one Ray worker."""

    depth_index: int
    depth: int | None
    seeds: tuple[int, ...]
    members: tuple[int, ...]  # their indices in the depth's stacked model (members_for)

    @property
    def name(self) -> str:
        depth = "" if self.depth is None else f"-depth{self.depth}"
        return f"actlab{depth}-seeds{'_'.join(map(str, self.seeds))}"


def plan_shards(
    config: ExperimentConfig, shard_size: int | None, slots: int
) -> list[list[tuple[int, ...]]]:
    """The seeds of each shard, per depth: consecutive seeds, ``max(1, shard_size //
    members_per_seed)`` of them per shard; by default (None), enough shards to give each of
    the cluster's `slots` (GPUs, else CPU slots) one, and no more shards than seeds.

    A shard always holds whole seeds (every activation and lr of each): the members of a
    seed share one layer-1 GEMM, whose shape must not change for the numbers to be the same
    as in a local run."""
    seeds = config.seeds
    per_seed = len(config.activations) * len(config.lrs)
    if shard_size is None:
        count = max(1, min(len(seeds), slots))
        size = math.ceil(len(seeds) / count)
    else:
        if shard_size < 1:
            raise ConfigError(f"--shard-size must be at least 1 member, got {shard_size}")
        size = max(1, shard_size // per_seed)
    groups = [tuple(seeds[i : i + size]) for i in range(0, len(seeds), size)]
    return [list(groups) for _ in config.depth_list]


def shards_of(config: ExperimentConfig, plan: Sequence[Sequence[tuple[int, ...]]]) -> list[Shard]:
    """Shard objects of a plan, depth after depth, with their members' indices."""
    shards = []
    for depth_index, depth in enumerate(config.depth_list):
        members = members_for(config, depth)
        for seeds in plan[depth_index]:
            index = tuple(m.index for m in members if m.seed in seeds)
            shards.append(Shard(depth_index, depth, tuple(seeds), index))
    return shards


def shard_config(
    config: ExperimentConfig, shard: Shard, device: str | None = None
) -> ExperimentConfig:
    """The config a worker trains: the study's, restricted to the shard's seeds, on
    `device` (the GPU Ray gave the task is always ``cuda``; default: the study's)."""
    return config.replace(seeds=shard.seeds, device=device or config.device)


def to_study_rows(rows: Sequence[dict], index: dict[tuple, int]) -> list[dict]:
    """A shard's rows with `member` set to the member's index in the study's stacked
    model; `index` maps (seed, activation, lr) to it (see `member_index`)."""
    return [{**row, "member": index[(row["seed"], row["activation"], row["lr"])]} for row in rows]


def member_index(config: ExperimentConfig, depth: int | None) -> dict[tuple, int]:
    """(seed, activation, lr) -> the member's index in the depth's stacked model."""
    return {(m.seed, m.activation, m.lr): m.index for m in members_for(config, depth)}


# --- the worker side ------------------------------------------------------------------------

# Per worker process: (dataset ObjectRef hex, device) -> the dataset on that device, so the
# dataset crosses the network and is converted to float once per process, not per task.
_DATA_CACHE: dict[tuple[str, str], DeviceData] = {}


def train_shard(
    config: ExperimentConfig,
    depth: int | None,
    dataset,
    state: dict | None,
    until_epoch: int,
    budget_members: int,
):
    """Train one shard from `state` (None: from scratch) through epoch `until_epoch`,
    yielding one dict per epoch: its rows, its time and, for the last, the engine state.

    It is `actlab.engine.trainer.train` itself, stopped after `until_epoch`; Ray runs it as a
    streaming generator. Pure apart from the training: no file is read or written."""
    for result in train(config, dataset, depth=depth, state=state, budget_members=budget_members):
        last = result.epoch >= until_epoch
        yield {
            "epoch": result.epoch,
            "metrics": result.metrics,
            "diagnostics": result.diagnostics,
            "epoch_time_s": result.epoch_time_s,
            "state": to_cpu(result.state) if last else None,
        }
        if last:
            return


def user_model_file(config: ExperimentConfig) -> tuple[str, bytes] | None:
    """The user's model file (``--model FILE.py:NAME``) and its bytes, shipped with every
    shard's task: the workers need no copy of it (nor a shared filesystem)."""
    source = config.model_source if config.is_user_model else None
    if not source or not source.endswith(".py") or not Path(source).is_file():
        return None  # a built-in model, or an importable module (installed on every node)
    return source, Path(source).read_bytes()


def localize_model(config: ExperimentConfig, shipped: tuple[str, bytes] | None):
    """`config` with its model file at a path of this node holding the shipped bytes: the
    original path when it holds them (the same machine), else a copy in the temp folder
    (named by the bytes' SHA-256, so that a changed file is a new copy)."""
    if shipped is None:
        return config
    path, data = shipped
    local = Path(path)
    if not (local.is_file() and local.read_bytes() == data):
        digest = hashlib.sha256(data).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"actlab-model-{digest}"
        folder.mkdir(parents=True, exist_ok=True)
        local = folder / Path(path).name
        if not (local.is_file() and local.read_bytes() == data):
            partial = local.with_name(f"{local.name}.{os.getpid()}.tmp")
            partial.write_bytes(data)
            os.replace(partial, local)
    name = config.model.rpartition(":")[2]
    return config.replace(model=f"{local}:{name}", model_source=str(local))


def to_cpu(value):
    """`value` with every tensor in it moved to the CPU (a GPU worker's state must be
    readable by a driver without a GPU; the engine copies it back onto its device)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(item) for item in value)
    return value


def _remote_shard(
    config: ExperimentConfig,
    depth: int | None,
    dataset_box: list,
    previous: dict | None,
    until_epoch: int,
    budget_members: int,
    threads: int,
    model_file: tuple[str, bytes] | None = None,
):
    """The Ray task: the dataset comes once per worker process from the object store (it
    is passed boxed in a list so that Ray does not fetch it for every task); a user's model
    file comes with the task (see `localize_model`)."""
    import ray

    torch.set_num_threads(threads)
    config = localize_model(config, model_file)
    (dataset_ref,) = dataset_box
    device = resolve_device(config.device)
    key = (dataset_ref.hex(), str(device))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = device_data(config, ray.get(dataset_ref), device)
    state = None if previous is None else previous["state"]
    yield from train_shard(config, depth, _DATA_CACHE[key], state, until_epoch, budget_members)


def device_data(config: ExperimentConfig, dataset, device):
    """The dataset on the worker's device, as its task's trainer reads it: a text corpus's
    tokens and windows (actlab.engine.lm_trainer.TextDeviceData) or float32 tensors."""
    if config.task.name == "lm":
        from actlab.engine.lm_trainer import TextDeviceData

        return TextDeviceData(dataset, device)
    return DeviceData.from_dataset(dataset, device)


# --- the cluster --------------------------------------------------------------------------


def check_options(address: str, shard_size: int | None, checkpoint_every: int) -> None:
    """One line for a malformed --ray, --shard-size or --checkpoint-every (before Ray)."""
    well_formed = (
        address in ("auto", "local")
        or address.startswith("ray://")
        or re.fullmatch(r"[^\s:/]+:\d{1,5}", address) is not None
    )
    if not well_formed:
        raise ConfigError(f"--ray {address!r}: give auto, local or HOST:PORT (e.g. 10.0.0.1:6379)")
    if shard_size is not None and shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1 member, got {shard_size}")
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1 epoch, got {checkpoint_every}")


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed; {INSTALL_HINT}") from None
    return ray


def connect(address: str):
    """Connect to the cluster `address` asks for: ``auto`` (RAY_ADDRESS, else a cluster
    started on this machine with `ray start --head`), ``local`` (a cluster for this run
    alone) or ``HOST:PORT``. Returns (the ray module, whether this call connected: a
    connection made before, e.g. ``ray.init(num_cpus=2)`` in a notebook, is used as it is
    and left open)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    quiet_token_notice()
    options = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address == "local":
        ray.init(include_dashboard=False, **options)
        return ray, True
    check_reachable(os.environ.get("RAY_ADDRESS", "") if address == "auto" else address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = "RAY_ADDRESS" if address == "auto" and os.environ.get("RAY_ADDRESS") else address
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"no Ray cluster reachable at --ray {where} ({first}); start one with "
            "`ray start --head`, give --ray HOST:PORT, or use --ray local"
        ) from None
    return ray, True


TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropTokenNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on by default (good news, printed
    as a WARNING between actlab's lines); the warning that it is *off* still passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def quiet_token_notice() -> None:
    """Silence Ray's token-authentication notice at its logger (once per process)."""
    logger = logging.getLogger(TOKEN_LOGGER)
    if not any(isinstance(f, _DropTokenNotice) for f in logger.filters):
        logger.addFilter(_DropTokenNotice())


def shutdown_uninterrupted(ray) -> None:
    """``ray.shutdown()`` with Ctrl-C held until it is done. A KeyboardInterrupt raised
    inside it left Ray half shut down, and Ray's own exit handler then ended the process
    with status 1 instead of actlab's 130 (a Ctrl-C right after the last epoch lands
    here). The held SIGINT is delivered once shutdown returns."""
    if threading.current_thread() is not threading.main_thread():
        ray.shutdown()
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: held.append(number))
    try:
        ray.shutdown()
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once a HOST:PORT nobody listens on (ray.init would retry for minutes).
    Other forms (empty, ``auto``, ``ray://...``) are left to Ray."""
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConfigError(
            f"no Ray cluster reachable at {address} ({error.strerror or error}); start one "
            "with `ray start --head`, check the address and port, or use --ray local"
        ) from None


@dataclass(frozen=True)
class ClusterPlan:
    """What each shard's task asks Ray for, checked against the cluster before any work."""

    num_cpus: int
    num_gpus: int
    slots: int  # shards the cluster can run at once


def plan_resources(config: ExperimentConfig, nodes: Sequence[dict]) -> ClusterPlan:
    """One GPU per shard when the cluster has GPUs and the study may use them (``--device
    auto`` or ``cuda``), else ``--threads`` CPUs (default 1). `nodes`: ``ray.nodes()``."""
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    gpus = sum(int(r.get("GPU", 0)) for r in alive)
    wants_gpu = config.device.startswith("cuda")
    if wants_gpu and gpus == 0:
        raise ConfigError(
            f"--device {config.device} but the Ray cluster has no GPU; add a GPU node or use --device cpu"
        )
    if wants_gpu or (config.device == "auto" and gpus > 0):
        return ClusterPlan(num_cpus=1, num_gpus=1, slots=gpus)
    threads = config.threads or 1
    most = max((int(r.get("CPU", 0)) for r in alive), default=0)
    if most < threads:
        raise ConfigError(
            f"a shard needs {threads} CPUs (--threads {threads}) but the largest Ray node has "
            f"{most}; use --threads {max(most, 1)} or add a larger node"
        )
    slots = sum(int(r.get("CPU", 0)) // threads for r in alive)
    return ClusterPlan(num_cpus=threads, num_gpus=0, slots=max(slots, 1))


def check_memory(needed: int, available: float, where: str) -> None:
    """Refuse a shard that needs more than `available` bytes (0: unknown, not checked)."""
    if available and needed > available:
        raise ConfigError(
            f"a shard needs about {needed / 2**30:.1f} GiB but {where} offers "
            f"{available / 2**30:.1f} GiB; use a smaller --shard-size or larger nodes"
        )


def node_memory(nodes: Sequence[dict]) -> float:
    """The largest alive node's memory for tasks (Ray's "memory" resource), in bytes."""
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    return max((float(r.get("memory", 0)) for r in alive), default=0.0)


def check_shard_memory(ray, config, dataset, shards, plan: ClusterPlan, nodes) -> None:
    """The largest shard, as a study of its own (`actlab.engine.memory.study_bytes`), against a
    GPU's memory (a probe task) on a GPU cluster, else against the largest node's memory."""
    from actlab.engine.memory import study_bytes

    if config.is_user_model:  # measured when built, on the worker (actlab.engine.vmap_stack)
        return
    if config.model == "gpt":  # as locally: measured by benchmarks/lm.py, not estimated
        return
    largest = max(shards, key=lambda shard: len(shard.members))
    needed = study_bytes(
        config.replace(seeds=largest.seeds),
        tuple(dataset.input_shape),
        int(dataset.num_classes),
        dataset.train_size + dataset.val_size + dataset.test_size,
        dataset.train_size,
    )
    if plan.num_gpus:
        probe = ray.remote(_gpu_memory).options(num_gpus=1, num_cpus=plan.num_cpus)
        check_memory(needed, ray.get(probe.remote(), timeout=600), "a GPU of the cluster")
    else:
        check_memory(needed, node_memory(nodes), "the largest Ray node")


def _worker_kernels(ray, config: ExperimentConfig, dataset, plan: ClusterPlan) -> str | None:
    """How a worker's step runs its elementwise work (`MLPStep.describe_kernels`, as a
    local run records it in config.json), asked of a worker with a shard's resources."""
    probe = ray.remote(_describe_kernels).options(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus)
    device = "cuda" if plan.num_gpus else "cpu"
    shape, classes = tuple(dataset.input_shape), int(dataset.num_classes)
    return ray.get(probe.remote(config, shape, classes, device), timeout=600)


def _describe_kernels(config: ExperimentConfig, input_shape, num_classes: int, device: str):
    """On a worker: the kernels of the first depth's step for one seed (None: not the
    hand-written MLP step, e.g. the CNN or your own network)."""
    from actlab.engine.mlp_step import MLPStep, supports
    from actlab.nn.mlp_builder import needs_builder
    from actlab.nn.models import build_model

    if config.is_user_model or config.model == "gpt" or needs_builder(config):
        return None
    config = config.replace(seeds=config.seeds[:1], device=device)
    depth = config.depth_list[0]
    members = members_for(config, depth)
    model = build_model(
        config, members, input_shape, num_classes, resolve_device(config.device), depth
    )
    return MLPStep(model).describe_kernels() if supports(model) else None


def _gpu_memory() -> int:
    """Total memory of the GPU Ray gives this task (a probe, run before any training)."""
    return int(torch.cuda.get_device_properties(0).total_memory)


# --- the driver ---------------------------------------------------------------------------


def run_study_on_ray(
    config: ExperimentConfig,
    *,
    address: str = "auto",
    out: str | Path | None = None,
    resume: bool = False,
    dataset=None,
    shard_size: int | None = None,
    checkpoint_every: int = 1,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int, int | None, int, int], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_shards: Callable[[list[Shard], ClusterPlan], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_resume: Callable[[str], None] | None = None,
    callback: StudyCallback | None = None,
) -> StudyResult:
    """`actlab.study.driver.run_study` on a Ray cluster: the same run directory, the same rows.

    `on_progress(steps, depth, epoch, epochs)` is called as shards finish epochs (steps of
    the whole study, as `on_start` counts them); `on_shards(shards, plan)` once, before
    training; `on_note(text)` once per repair made when the run directory was reopened;
    `on_resume(line)` once when training continues a checkpoint (``resuming after epoch
    3/10``, as a local run says)."""
    hooks = callback_of(
        callback,
        on_start=on_start,
        on_progress=on_progress,
        on_epoch=on_epoch,
        on_shards=on_shards,
        on_note=on_note,
        on_resume=on_resume,
    )
    check_options(address, shard_size, checkpoint_every)
    config.check_activations()
    if config.is_user_model:
        from actlab.study.driver import check_model_source

        check_model_source(config)  # it loads here, and is the file the config was made for
    ray, connected = connect(address)
    try:
        nodes = ray.nodes()
        plan = plan_resources(config, nodes)
        if dataset is None:
            dataset = load_study_dataset(config)
        layout = plan_shards(config, shard_size, plan.slots)
        check_shard_memory(ray, config, dataset, shards_of(config, layout), plan, nodes)
        writer = None
        if out is not None:
            environment = store.describe_environment(
                "cuda" if plan.num_gpus else "cpu", plan.num_cpus
            )
            environment["step_kernels"] = _worker_kernels(ray, config, dataset, plan)
            environment["ray"] = {
                "address": address,
                "nodes": sum(1 for node in nodes if node.get("Alive", True)),
                "ray": ray.__version__,
                "shard_size": shard_size,
                "checkpoint_every": checkpoint_every,
            }
            writer = open_study_dir(out, config, dataset, environment, resume, hooks)
        try:
            checkpoint = writer.checkpoint if writer is not None else None
            _check_ray_checkpoint(checkpoint, writer)
            if checkpoint is not None:  # the shards in progress keep their seeds
                layout[checkpoint.depth_index] = [
                    tuple(seeds) for seeds in checkpoint.engine["shards"]["seeds"]
                ]
            shards = shards_of(config, layout)
            hooks.on_shards(shards, plan)
            executor = RayExecutor(ray, config, dataset, plan, checkpoint_every, shards, hooks)
            return run_depths(config, writer, executor, dataset.train_size, hooks)
        finally:
            if writer is not None:
                writer.close()
    finally:
        if connected:
            shutdown_uninterrupted(ray)


def _check_ray_checkpoint(checkpoint, writer) -> None:
    if checkpoint is not None and not checkpoint.sharded:
        raise RunDirError(
            f"{writer.path} was written by a local run; resume it without --ray "
            "(or choose another --out)"
        )


class RayExecutor:
    """The Ray executor of the study driver (actlab.study.driver.run_depths): submits
    shard tasks, gathers their epochs, writes the run directory from the driver alone."""

    def __init__(self, ray, config, dataset, plan: ClusterPlan, checkpoint_every: int, shards,
                 hooks: StudyCallback):  # fmt: skip
        self.ray = ray
        self.config = config
        self.writer = None
        self.shards = shards
        self.hooks = hooks
        self.checkpoint_every = checkpoint_every
        self.dataset_box = [ray.put(dataset)]
        self.steps_per_epoch = -(-dataset.train_size // config.batch_size)
        self.task = ray.remote(_remote_shard)
        self.task_options = {
            "num_cpus": plan.num_cpus,
            "num_gpus": plan.num_gpus,
            "max_retries": MAX_RETRIES,
        }
        self.threads = plan.num_cpus
        self.model_file = user_model_file(config)

    def check_checkpoint(self, checkpoint, writer) -> None:
        self.writer = writer
        _check_ray_checkpoint(checkpoint, writer)

    def before(self, point: ResumePoint, total: int, done: int, steps_per_epoch: int) -> None:
        line = point.resume_line()
        if line is not None:
            self.hooks.on_resume(line)

    def train_depth(self, index: int, depth: int | None, resumed) -> list[dict]:
        mine = [s for s in self.shards if s.depth_index == index]
        if resumed is not None:
            states, first_epoch = resumed.engine["shards"]["states"], resumed.epoch + 1
        else:
            states, first_epoch = [None] * len(mine), 1
        return self._train_depth(mine, states, first_epoch)

    def _until(self, epoch: int) -> int:
        """The last epoch of the checkpoint interval that starts at `epoch`."""
        every = self.checkpoint_every
        return min(self.config.epochs, ((epoch - 1) // every + 1) * every)

    def _submit(self, shard: Shard, previous, first_epoch: int, members: int):
        until = self._until(first_epoch)
        return self.task.options(
            name=f"{shard.name}-epoch{first_epoch}", **self.task_options
        ).remote(
            shard_config(self.config, shard, "cuda" if self.task_options["num_gpus"] else "cpu"),
            shard.depth,
            self.dataset_box,
            previous,
            until,
            members,
            self.threads,
            self.model_file,
        )

    def _train_depth(self, shards, states, first_epoch) -> list[dict]:
        ray, config = self.ray, self.config
        depth_index, depth = shards[0].depth_index, shards[0].depth
        members = members_for(config, depth)
        total_members = len(members)
        # The first task of a resumed shard gets its checkpointed state, boxed as the
        # yields of a previous task are (a dict holding "state").
        pending = {}  # generator -> (shard, the epoch its next yield is)
        for i, (shard, state) in enumerate(zip(shards, states, strict=True)):
            previous = None if state is None else {"state": state}
            pending[self._submit(shard, previous, first_epoch, total_members)] = (i, first_epoch)
        arrived: dict[int, dict[int, dict]] = {}  # epoch -> shard -> its yield
        next_epoch = first_epoch
        rows: list[dict] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for generator in ready:
                i, epoch = pending.pop(generator)
                try:
                    ref = next(generator)
                except StopIteration:
                    continue
                if epoch < self._until(epoch):
                    pending[generator] = (i, epoch + 1)
                elif epoch < config.epochs:
                    # The interval's last epoch holds the shard's state: the next task gets
                    # it by reference (no copy through the driver) and starts while the
                    # driver fetches its own copy for the checkpoint.
                    next_task = self._submit(shards[i], ref, epoch + 1, total_members)
                    pending[next_task] = (i, epoch + 1)
                part = _get(ray, ref)
                arrived.setdefault(epoch, {})[i] = part
                steps = self.steps_per_epoch * len(shards[i].members) / total_members
                self.hooks.on_progress(steps, depth, epoch, config.epochs)
            while len(arrived.get(next_epoch, {})) == len(shards):
                parts = arrived.pop(next_epoch)
                rows += self._write_epoch(shards, parts, depth_index, depth, members)
                next_epoch += 1
        return rows

    def _write_epoch(self, shards, parts, depth_index, depth, members) -> list[dict]:
        """Append one epoch of every shard, in member order; checkpoint at an interval's end."""
        epoch = parts[0]["epoch"]
        metrics, diagnostics = [], []
        index = member_index(self.config, depth)
        for i in range(len(shards)):
            metrics += to_study_rows(parts[i]["metrics"], index)
            diagnostics += to_study_rows(parts[i]["diagnostics"], index)
        if self.writer is not None:
            self.writer.append_rows(metrics, diagnostics)
            if parts[0]["state"] is not None:
                self.writer.save_checkpoint(
                    depth_index=depth_index,
                    depth=depth,
                    epoch=epoch,
                    engine={
                        "shards": {
                            "seeds": [list(s.seeds) for s in shards],
                            "states": [parts[i]["state"] for i in range(len(shards))],
                        }
                    },
                )
        self.hooks.on_epoch(
            EpochResult(
                depth=depth,
                epoch=epoch,
                epochs=self.config.epochs,
                members=list(members),
                metrics=metrics,
                diagnostics=diagnostics,
                epoch_time_s=max(p["epoch_time_s"] for p in parts.values()),
                diverged=[row["member"] for row in metrics if row["status"] == "diverged"],
            )
        )
        return metrics


def _get(ray, ref):
    """ray.get, with a shard's user error (ActlabError) re-raised as itself: one line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, ActlabError):
            raise cause from None
        if "No module named 'actlab'" in str(error):
            raise ConfigError(
                "the Ray workers cannot import actlab; install the same actlab on every node "
                f"({INSTALL_HINT}, into the Python that runs `ray start`)"
            ) from None
        raise  # a bug in actlab: keep its traceback
    except ray.exceptions.RayError as error:  # workers or nodes lost beyond the retries
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ClusterError(
            f"a shard was lost after {MAX_RETRIES} retries ({type(error).__name__}: {first}); "
            "rerun the same command to resume from the last checkpoint"
        ) from None
