"""`actlab compare --ray` on a real local Ray cluster: a head node and a second node, each
started with `ray start --block` (1 CPU, 100 MB object store, no dashboard) and shared by
the tests of this module. The oracle is the local run of the same study (one thread)."""

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fixtures.data import write_npz

from actlab.cli.main import main
from actlab.config import ExperimentConfig
from actlab.errors import ConfigError, RunDirError
from actlab.study import cluster, store
from actlab.study.driver import run_study


def without_time(path: Path, name: str = store.METRICS_FILE) -> list[dict]:
    """A run's CSV rows without the wall time (the one column that may differ)."""
    with (path / name).open() as handle:
        return [
            {k: v for k, v in row.items() if k != "epoch_time_s"} for row in csv.DictReader(handle)
        ]


# Evaluation (test and val loss, accuracy, the probe's diagnostics) runs torch's elementwise
# ops over the whole stacked tensor, and some of them (sigmoid, gelu here) round a tensor's
# SIMD body and its scalar tail differently, so a member's evaluated numbers may move with
# its position in the stack (a Ray shard holds fewer members): 1e-9 relative measured, a
# test accuracy could flip only on an exact near-tie of two logits. Training itself is the
# same arithmetic in any stack (see test_a_shard_trains_its_members_as_the_whole_study).
EVAL_RTOL = 1e-6
EVALUATED = ("val_loss", "test_loss", "probe_grad_norm", "dead_frac", "saturated_frac",
             "preact_mean", "preact_std", "val_metric", "test_metric")  # fmt: skip


def assert_same_rows(
    ray_rows: list[dict],
    local_rows: list[dict],
    test_size: int,
    exact_training: bool = True,
    rtol: float = EVAL_RTOL,
) -> None:
    """Ray's rows are the local ones: training columns exactly (within EVAL_RTOL too when
    not `exact_training`), evaluated ones within EVAL_RTOL, accuracies within one test
    sample (see above)."""
    assert len(ray_rows) == len(local_rows)
    for mine, theirs in zip(ray_rows, local_rows, strict=True):
        assert mine.keys() == theirs.keys()
        for name, value in mine.items():
            other = theirs[name]
            numeric = name not in ("activation", "status", "seed", "epoch", "lr", "depth", "layer")
            rounded = name in EVALUATED or (not exact_training and numeric)
            if rounded and value and other:
                assert float(value) == pytest.approx(float(other), rel=rtol), name
            elif name in ("test_acc", "val_acc") and value and other:
                assert abs(float(value) - float(other)) <= 1 / test_size + 1e-12, name
            else:
                assert value == other, (name, mine, theirs)


def trained(config: ExperimentConfig, data, members: int):
    from actlab.engine.trainer import Trainer

    trainer = Trainer(config, data, budget_members=members)
    rows = [row for _ in range(config.epochs) for row in trainer.train_epoch().metrics]
    return trainer, rows


@pytest.mark.parametrize("model", ["mlp", "own"])
def test_a_shard_trains_its_members_as_the_whole_study(model, tmp_path, one_thread):
    """The cause of issue 25 item 6 / issue 21 item 2: torch's fused Adam kernel rounds a
    tensor's scalar tail differently from its SIMD body, and which elements of a member
    fall in the tail depends on how many members share the stacked tensor (and on the
    CPU's SIMD width). A member's training must be the same IEEE arithmetic whatever the
    stack (the same GEMM shapes per seed, the compiled kernels row by row, Adam on
    member-aligned tensors), so its weights are compared exactly."""
    from actlab.data.datasets import load_dataset
    from actlab.engine.batches import DeviceData
    from actlab.nn import user_model

    options: dict = {"hidden": (32,)}
    if model == "own":
        (tmp_path / "net.py").write_text(USER_MODEL.replace("16, 4", "16, 10"))
        user = user_model.load(f"{tmp_path / 'net.py'}:build")
        options = {"model": f"{tmp_path / 'net.py'}:build", "model_source": user.source,
                   "model_sha256": user.sha256}  # fmt: skip
    config = ExperimentConfig(dataset="digits", activations=("relu", "tanh", "gelu"),
                              seeds=(0, 1, 2), epochs=3, standardize=True, threads=1,
                              **options)  # fmt: skip
    data = DeviceData.from_dataset(load_dataset("digits", standardize=True), torch.device("cpu"))
    K = len(cluster.members_for(config))
    whole, whole_rows = trained(config, data, K)
    rows = {(r["seed"], r["activation"], r["epoch"]): r for r in whole_rows}
    for first, seeds in ((0, (0,)), (1, (1, 2))):
        shard, shard_rows = trained(config.replace(seeds=seeds), data, K)
        mine, theirs = shard.model.state_dict(), whole.model.state_dict()
        for name, tensor in mine.items():
            if tensor.dim() and tensor.shape[0] == len(seeds) * 3:  # stacked over members
                part = theirs[name][3 * first : 3 * first + tensor.shape[0]]
                assert torch.equal(tensor, part), name
        for row in shard_rows:
            other = rows[(row["seed"], row["activation"], row["epoch"])]
            for name in ("train_loss", "train_acc", "status"):
                assert row[name] == other[name], (name, row, other)
            assert row["test_loss"] == pytest.approx(other["test_loss"], rel=EVAL_RTOL)


def test_rays_token_notice_is_silenced_at_its_logger():
    """Ray's "token authentication is enabled" WARNING reached the user between actlab's
    lines (issue 21); the notice that it is disabled (a security warning) still passes.
    Records are caught by a handler on the logger itself: Ray, once imported by another
    test, stops its loggers' propagation to the root that pytest's caplog listens on."""
    import logging

    cluster.quiet_token_notice()
    logger = logging.getLogger(cluster.TOKEN_LOGGER)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.WARNING
    try:
        logger.warning("Token authentication is enabled for this Ray cluster. Set ...")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone ...")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [r.getMessage()[:33] for r in records] == ["Token authentication is disabled "]


def test_ctrl_c_during_ray_shutdown_waits_for_it(monkeypatch):
    """A Ctrl-C right after the last epoch of a --ray run landed in ray.shutdown(), left
    Ray half shut down, and the process ended with status 1 instead of 130 (issue 25)."""

    class FakeRay:
        done = False

        def shutdown(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, mid-shutdown
            time.sleep(0.2)
            self.done = True

    ray = FakeRay()
    with pytest.raises(KeyboardInterrupt):
        cluster.shutdown_uninterrupted(ray)
    assert ray.done  # the interrupt came after the shutdown, not in its middle


# --- shards (no cluster) ------------------------------------------------------------------


def test_shards_are_whole_seeds_and_renumber_members():
    config = ExperimentConfig(
        activations=("relu", "tanh"), lrs=(1e-3, 3e-3), seeds=(0, 1, 2, 5, 7), depths=(1, 2)
    )
    # 4 members per seed: --shard-size 9 rounds down to 2 seeds per shard.
    plan = cluster.plan_shards(config, 9, slots=1)
    assert plan == [[(0, 1), (2, 5), (7,)]] * 2
    assert cluster.plan_shards(config, 3, slots=1)[0] == [(0,), (1,), (2,), (5,), (7,)]
    # By default: as many shards as the cluster has slots, never more than seeds.
    assert cluster.plan_shards(config, None, slots=2)[0] == [(0, 1, 2), (5, 7)]
    assert cluster.plan_shards(config, None, slots=64)[0] == [(s,) for s in config.seeds]
    shards = cluster.shards_of(config, plan)
    assert [s.depth for s in shards] == [1, 1, 1, 2, 2, 2]
    assert shards[1].members == (8, 9, 10, 11, 12, 13, 14, 15)
    shard_config = cluster.shard_config(config, shards[1])
    assert shard_config.seeds == (2, 5) and shard_config.study_key() == config.study_key()
    index = cluster.member_index(config, 1)
    rows = [
        {"member": 0, "seed": 2, "activation": "relu", "lr": 1e-3},
        {"member": 7, "seed": 5, "activation": "tanh", "lr": 3e-3},
    ]
    assert [r["member"] for r in cluster.to_study_rows(rows, index)] == [8, 15]
    with pytest.raises(ConfigError, match="--shard-size"):
        cluster.plan_shards(config, 0, slots=1)


def test_resources_are_checked_before_any_work():
    cpu_node = {"Alive": True, "Resources": {"CPU": 2.0, "memory": 2.0 * 2**30}}
    plan = cluster.plan_resources(ExperimentConfig(device="auto"), [cpu_node, cpu_node])
    assert (plan.num_cpus, plan.num_gpus, plan.slots) == (1, 0, 4)
    with pytest.raises(ConfigError, match="no GPU"):
        cluster.plan_resources(ExperimentConfig(device="cuda"), [cpu_node])
    with pytest.raises(ConfigError, match="needs 4 CPUs"):
        cluster.plan_resources(ExperimentConfig(threads=4), [cpu_node])
    gpu_node = {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}}
    assert cluster.plan_resources(ExperimentConfig(), [gpu_node]).num_gpus == 1
    assert cluster.node_memory([cpu_node]) == 2 * 2**30
    with pytest.raises(ConfigError, match="3.0 GiB but the largest Ray node offers 2.0 GiB"):
        cluster.check_memory(3 * 2**30, 2 * 2**30, "the largest Ray node")
    cluster.check_memory(3 * 2**30, 0.0, "a node of unknown memory")  # not checked
    # The largest shard is estimated as a study of its own (actlab.engine.memory).
    config = ExperimentConfig(hidden=(4096, 4096), activations=("relu", "tanh"), seeds=(0, 1, 2))
    dataset = SimpleNamespace(
        input_shape=(1, 28, 28), num_classes=10, train_size=60000, val_size=0, test_size=10000
    )
    shards = cluster.shards_of(config, [[(0, 1), (2,)]])
    small_node = {"Alive": True, "Resources": {"CPU": 1.0, "memory": 1.0 * 2**30}}
    cpu_plan = cluster.ClusterPlan(num_cpus=1, num_gpus=0, slots=1)
    with pytest.raises(ConfigError, match="but the largest Ray node offers 1.0 GiB"):
        cluster.check_shard_memory(None, config, dataset, shards, cpu_plan, [small_node])
    big_node = {"Alive": True, "Resources": {"CPU": 1.0, "memory": 64.0 * 2**30}}
    cluster.check_shard_memory(None, config, dataset, shards, cpu_plan, [big_node])


def test_without_ray_the_flag_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "actlab\[ray\]"'):
        cluster.import_ray()
    code = main(["compare", "--dataset", "digits", "--epochs", "1", "--ray", "--quiet"])
    assert code == 2 and 'pip install "actlab[ray]"' in capsys.readouterr().err


def test_an_address_nobody_listens_on_is_one_line(capsys):
    pytest.importorskip("ray")
    port = free_port()  # closed again: nothing listens there
    code = main(["compare", "--dataset", "digits", "--epochs", "1", "--ray", f"127.0.0.1:{port}", "--quiet"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and f"no Ray cluster reachable at 127.0.0.1:{port}" in error


def test_shard_options_need_ray(capsys):
    assert main(["compare", "--shard-size", "4", "--quiet"]) == 2
    assert "--ray" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, message",
    [
        (["--ray", "x"], "give auto, local or HOST:PORT"),
        (["--ray", "host:port"], "give auto, local or HOST:PORT"),
        (["--ray", "", "--shard-size", "2"], "give auto, local or HOST:PORT"),
        (["--ray", "--shard-size", "0"], "--shard-size must be at least 1"),
        (["--ray", "--checkpoint-every", "-1"], "--checkpoint-every must be at least 1"),
    ],
)
def test_malformed_ray_options_are_one_line_before_anything(options, message, capsys):
    # Refused before Ray is imported or the dataset is loaded.
    code = main(["compare", "--quiet", "--no-download", *options])
    error = capsys.readouterr().err
    assert code == 2 and message in error and len(error.splitlines()) == 1


# --- a real cluster -----------------------------------------------------------------------


def lm_corpus(path: Path) -> Path:
    words = ["def", "return", "self", "x", "=", "(", ")", ":", "\n", "    ", "if", "for"]
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(0, len(words), (2500,), generator=generator).tolist()
    path.write_text(" ".join(words[i] for i in picks), encoding="utf-8")
    return path


def test_an_lm_shard_trains_its_members_as_the_whole_study(tmp_path, one_thread):
    """--net gpt: a shard of whole seeds (its own windows, its FFN groups smaller) gives
    its members' rows and diagnostics exactly as the whole study does."""
    from actlab.data import text
    from actlab.engine.lm_trainer import LMTrainer

    corpus = lm_corpus(tmp_path / "corpus.txt")
    config = ExperimentConfig(
        dataset=f"text:{corpus}", model="gpt", activations=("relu", "swiglu", "gelu"),
        seeds=(0, 1, 2), width=16, layers=2, heads=2, context=12, batch_size=8, epochs=2,
        optimizer="adamw", schedule="cosine", warmup=5, clip=1.0, threads=1,
    )  # fmt: skip
    data = cluster.device_data(config, text.load_text(config.dataset, context=12), "cpu")

    def rows(config):
        trainer = LMTrainer(config, data, budget_members=9)
        results = [trainer.train_epoch() for _ in range(config.epochs)]
        keyed = {}
        for row in (row for r in results for row in r.metrics + r.diagnostics):
            key = (row["seed"], row["activation"], row["epoch"], row.get("layer"))
            keyed[key] = {k: v for k, v in row.items() if k not in ("member", "epoch_time_s")}
        return keyed

    whole = rows(config)
    shard = rows(config.replace(seeds=(1, 2)))
    assert len(shard) == 2 * 3 * 2 * (1 + 11)
    for key, row in shard.items():
        assert row == whole[key], key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


@pytest.fixture(scope="module")
def ray_address():
    """A head node and a second node on this machine, 1 CPU each; stopped in teardown by
    interrupting the two `ray start --block` processes (each stops what it started)."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="alr", dir="/tmp")  # short: Ray's socket paths are limited
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--object-store-memory", "100000000", "--block"]
    # The nodes, the probes and the drivers (subprocesses) all inherit these: no token
    # authentication (a throwaway cluster on 127.0.0.1; Ray would otherwise turn it on
    # when ~/.ray/auth_token exists), no usage reporting, no other cluster's address.
    saved = {
        name: os.environ.get(name)
        for name in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "RAY_ADDRESS")
    }
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("RAY_ADDRESS", None)
    env = dict(os.environ)
    nodes = []
    try:
        nodes.append(
            subprocess.Popen(
                ray_command(
                    "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                    "--include-dashboard=false", "--temp-dir", temp,
                    "--ray-client-server-port", str(free_port()),
                    "--dashboard-agent-listen-port", str(free_port()), *common,
                ),
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        wait_for_port(port, nodes)
        nodes.append(
            subprocess.Popen(
                ray_command(
                    "start", "--address", address, "--node-ip-address", "127.0.0.1",
                    "--dashboard-agent-listen-port", str(free_port()), *common,
                ),
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        wait_for_cpus(address, 2, nodes)
        yield address
    finally:
        stop_nodes(nodes)
        shutil.rmtree(temp, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def process_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, from /proc; None when it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of the processes started, directly or not, by `pid`."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        stat = process_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child[0])
    return found


def stop_nodes(nodes: list) -> None:
    """Interrupt each `ray start --block` (it then stops the processes it started); what
    is still running after 10 s of the node's processes (the same pid and start time as
    before the interrupt) is killed by pid."""
    trees = [descendants(node.pid) for node in nodes]
    for node in reversed(nodes):
        node.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    for node in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=max(0.1, deadline - time.monotonic()))
    for node, tree in zip(nodes, trees, strict=True):
        for pid, started in tree:
            stat = process_stat(pid)
            if stat is not None and stat[1] == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if node.poll() is None:
            node.kill()
        node.wait()


def wait_for_port(port: int, nodes: list, timeout: float = 120) -> None:
    """Wait until the head node's GCS port accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(node.poll() is not None for node in nodes):
            raise RuntimeError("`ray start --head` exited during startup")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head node did not open port {port}")


def wait_for_cpus(address: str, cpus: int, nodes: list, timeout: float = 120) -> None:
    """Poll the cluster (from a subprocess: this process never connects) until it has
    `cpus` CPUs."""
    probe = (
        f"import ray, logging; ray.init(address={address!r}, logging_level=logging.ERROR); "
        "print(int(ray.cluster_resources().get('CPU', 0)))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(node.poll() is not None for node in nodes):
            raise RuntimeError("a `ray start` process exited during startup")
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
        )
        if result.returncode == 0 and result.stdout.strip() == str(cpus):
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {cpus} CPUs")


def actlab_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "actlab", "compare", "--threads", "1", "--no-report", *args]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return write_npz(tmp_path_factory.mktemp("data") / "ray.npz", 1200, 200, side=8)


STUDY = [
    "--activations", "relu,tanh", "--lr", "1e-3,3e-3", "--seeds", "3", "--epochs", "3",
    "--depths", "1,2", "--hidden", "32", "--dropout", "0.2", "--standardize",
]  # fmt: skip


@pytest.fixture(scope="module")
def local_run(data, tmp_path_factory) -> Path:
    """The oracle: the same study trained locally, one stacked model, one thread."""
    out = tmp_path_factory.mktemp("local") / "run"
    assert main(["compare", "--threads", "1", "--no-report", "--quiet", "--dataset", data, *STUDY, "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.mark.slow
def test_ray_study_has_the_local_numbers(ray_address, data, local_run, tmp_path):
    out = tmp_path / "ray"
    run = subprocess.run(
        actlab_cli("--dataset", data, *STUDY, "--out", str(out), "--ray", ray_address,
                   "--checkpoint-every", "2"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Token authentication" not in run.stderr
    # 4 members per seed, 2 CPUs: shards of 2 and 1 seeds, for each depth.
    assert "ray: 4 shards of 4/8 members, 1 CPU each, 2 at once" in run.stdout
    # metrics.csv and diagnostics.csv row for row as the local run (in member order).
    assert_same_rows(without_time(out), without_time(local_run), 200)
    assert_same_rows(
        without_time(out, store.DIAGNOSTICS_FILE),
        without_time(local_run, store.DIAGNOSTICS_FILE),
        200,
    )
    assert store.read_run(out).environment["step_kernels"].startswith("compiled")
    assert store.read_run(out).environment["ray"]["nodes"] == 2
    # Checkpoints every 2 epochs, and at the end of each depth.
    checkpoint = torch.load(out / store.CHECKPOINT_FILE, weights_only=True)
    assert (checkpoint["depth"], checkpoint["epoch"]) == (2, 3)
    assert checkpoint["engine"]["shards"]["seeds"] == [[0, 1], [2]]
    # A local run cannot continue a Ray run directory (its checkpoint holds shards).
    with pytest.raises(RunDirError, match="--ray"):
        run_study(store.read_run(out).config, out=out)


LM_RTOL = 1e-4  # see test_lm_study_on_ray_has_the_local_numbers
LM_STUDY = [
    "--net", "gpt", "--activations", "relu,swiglu", "--seeds", "3", "--epochs", "2",
    "--width", "16", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "16",
    "--lr", "3e-3", "--optimizer", "adamw", "--schedule", "cosine", "--warmup", "5",
    "--clip", "1.0",
]  # fmt: skip


@pytest.mark.slow
def test_lm_study_on_ray_has_the_local_numbers(ray_address, tmp_path):
    """--net gpt on Ray: metrics.csv and diagnostics.csv as the local run's, every number
    within LM_RTOL. Not exactly, as for the MLP: a shard of one seed (here [2]) puts one
    member in each FFN group, and the stacked GPT's products then take other CPU kernels,
    whose rounding differs (about 1e-8 relative in the first epoch's train loss, 1e-6 in a
    small gradient norm after two epochs); shards of several seeds train exactly as the
    whole study (test_an_lm_shard_trains_its_members_as_the_whole_study)."""
    corpus = lm_corpus(tmp_path / "corpus.txt")
    study = ["--dataset", f"text:{corpus}", *LM_STUDY]
    local, ray = tmp_path / "local", tmp_path / "ray"
    assert main(["compare", "--threads", "1", "--no-report", "--quiet", *study, "--out", str(local)]) == 0  # fmt: skip
    run = subprocess.run(
        actlab_cli(*study, "--out", str(ray), "--ray", ray_address),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "ray: 2 shards" in run.stdout
    assert_same_rows(without_time(ray), without_time(local), 1, False, LM_RTOL)
    assert_same_rows(
        without_time(ray, store.DIAGNOSTICS_FILE),
        without_time(local, store.DIAGNOSTICS_FILE),
        1,
        False,
        LM_RTOL,
    )
    assert len(without_time(ray, store.DIAGNOSTICS_FILE)) == 2 * 3 * 2 * 7
    checkpoint = torch.load(ray / store.CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["engine"]["shards"]["seeds"] == [[0, 1], [2]]


USER_MODEL = """from torch import nn


def build(act):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), act(), nn.Linear(16, 4))
"""


@pytest.mark.slow
def test_own_model_on_ray_has_the_local_numbers(ray_address, data, tmp_path, monkeypatch):
    """--model FILE.py:NAME (issue 13) on Ray: the file goes with the tasks, given by a
    relative path (the workers run in other folders)."""
    (tmp_path / "net.py").write_text(USER_MODEL)
    monkeypatch.chdir(tmp_path)
    study = ["--model", "net.py:build", "--activations", "relu,tanh,gelu", "--seeds", "2",
             "--epochs", "2", "--standardize"]  # fmt: skip
    assert main(["compare", "--threads", "1", "--no-report", "--quiet", "--dataset", data, *study, "--out", "local"]) == 0  # fmt: skip
    run = subprocess.run(
        actlab_cli("--dataset", data, *study, "--out", "ray", "--ray", ray_address, "--quiet"),
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert_same_rows(without_time(tmp_path / "ray"), without_time(tmp_path / "local"), 200)


OWN_METRIC = """

def brier(output, target):  # the mean squared distance of the softmax from the one-hot target
    probabilities = output.softmax(-1)
    one_hot = nn.functional.one_hot(target, probabilities.shape[-1]).to(probabilities.dtype)
    return ((probabilities - one_hot) ** 2).sum(-1).mean()


build.metric = brier
build.metric_higher_is_better = False
"""


@pytest.mark.slow
def test_own_metric_on_ray_has_the_local_numbers(ray_address, data, tmp_path, monkeypatch):
    """A model's own metric function (issue 26) on Ray: the workers load it from the file
    that travels with the tasks and record the local val_metric/test_metric."""
    (tmp_path / "net.py").write_text(USER_MODEL + OWN_METRIC)
    monkeypatch.chdir(tmp_path)
    study = ["--model", "net.py:build", "--activations", "relu,tanh", "--seeds", "2",
             "--epochs", "2", "--standardize", "--val-size", "100"]  # fmt: skip
    assert main(["compare", "--threads", "1", "--no-report", "--quiet", "--dataset", data, *study, "--out", "local"]) == 0  # fmt: skip
    run = subprocess.run(
        actlab_cli("--dataset", data, *study, "--out", "ray", "--ray", ray_address, "--quiet"),
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = without_time(tmp_path / "ray")
    assert all(row["test_metric"] and row["val_metric"] for row in rows)
    assert_same_rows(rows, without_time(tmp_path / "local"), 200)


def test_a_model_file_travels_to_nodes_without_it(tmp_path):
    config = ExperimentConfig(model="/elsewhere/net.py:build", model_source="/elsewhere/net.py")
    here = cluster.localize_model(config, ("/elsewhere/net.py", USER_MODEL.encode()))
    where, _, name = here.model.rpartition(":")
    assert name == "build" and here.model_source == where != "/elsewhere/net.py"
    assert Path(where).read_text() == USER_MODEL
    same = tmp_path / "net.py"
    same.write_text(USER_MODEL)  # the same file on this node: used where it is
    config = config.replace(model=f"{same}:build", model_source=str(same))
    assert cluster.localize_model(config, (str(same), USER_MODEL.encode())) == config
    assert cluster.localize_model(ExperimentConfig(), None) == ExperimentConfig()


def process_titled(prefix: str) -> int | None:
    """The pid of the process whose title (Ray sets ``ray::<task name>``) starts with
    `prefix`, if any."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(prefix):
            return int(entry.name)
    return None


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory) -> str:
    """Enough samples for an epoch of about a second, so that a kill lands inside one."""
    return write_npz(tmp_path_factory.mktemp("slow") / "slow.npz", 3000, 200, side=16)


SLOW_STUDY = ["--activations", "relu,tanh", "--seeds", "2", "--epochs", "2", "--batch-size", "8"]


@pytest.fixture(scope="module")
def slow_local(slow_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slow_local") / "run"
    assert main(["compare", "--threads", "1", "--no-report", "--quiet", "--dataset", slow_data, *SLOW_STUDY, "--out", str(out)]) == 0  # fmt: skip
    return out


def wait_for(condition, timeout: float, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"the driver exited early: {process.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_killed_driver_and_killed_worker_end_with_the_uninterrupted_numbers(
    ray_address, slow_data, slow_local, tmp_path
):
    """The driver is SIGKILLed after epoch 1 and rerun: it resumes both shards from the run
    directory. Then the worker training seed 1's epoch 2 is SIGKILLed: Ray retries the
    task from that shard's epoch-1 checkpoint (sent back by the rerun driver). Every row is there once, with the numbers of
    the uninterrupted local run."""
    out = tmp_path / "ray"
    command = actlab_cli("--dataset", slow_data, *SLOW_STUDY, "--out", str(out), "--ray", ray_address)  # fmt: skip
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / store.CHECKPOINT_FILE).exists(), 240, driver)
        driver.kill()  # SIGKILL: no cleanup at all
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    done = torch.load(out / store.CHECKPOINT_FILE, weights_only=True)["epoch"]
    assert done == 1  # the kill lands well within epoch 2 (about a second)

    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The worker running seed 1's epoch 2 (its title is the task's name).
        pid = wait_for(lambda: process_titled("ray::actlab-seeds1-epoch2"), 240, driver)
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr
    assert "resuming after epoch 1/2" in stdout
    assert_same_rows(without_time(out), without_time(slow_local), 200)
