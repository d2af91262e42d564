"""The thread count chosen by measuring (actlab/engine/threads.py) and its use by a study: the
choice logic against fake step times (no timed assertion), the CPU limits from fake
cgroup files, and a real study that records and prints what it chose."""

import json

import numpy as np
import pytest
import torch

from actlab.cli.main import main
from actlab.config import ExperimentConfig
from actlab.engine.batches import DeviceData
from actlab.engine.threads import (
    StepWatch,
    ThreadChoice,
    available_cpus,
    candidate_counts,
    cgroup_cpu_limit,
    choose_threads,
)
from actlab.engine.trainer import Trainer
from actlab.study.driver import ThreadKeeper, format_duration, run_study

pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    x = rng.integers(0, 256, (320, 6, 6), dtype=np.uint8)
    y = (x.reshape(320, -1).sum(1) % 3).astype(np.int64)
    np.savez(path, x_train=x[:256], y_train=y[:256], x_test=x[256:], y_test=y[256:])
    return f"npz:{path}"


class FakeMachine:
    """A step whose duration depends on the thread count set (a fake clock advances)."""

    def __init__(self, seconds_by_threads: dict[int, float]) -> None:
        self.seconds = seconds_by_threads
        self.now = 0.0
        self.threads = 1
        self.calls: list[int] = []

    def set_threads(self, count: int) -> None:
        self.threads = count

    def step(self) -> None:
        self.calls.append(self.threads)
        self.now += self.seconds[self.threads]

    def clock(self) -> float:
        return self.now


def test_the_fastest_count_is_kept_and_set():
    machine = FakeMachine({1: 0.004, 2: 0.030, 4: 0.010})  # a busy machine: 1 thread wins
    choice = choose_threads(machine.step, [1, 2, 4], clock=machine.clock,
                            set_threads=machine.set_threads)  # fmt: skip
    assert choice.threads == 1 and machine.threads == 1 and not choice.forced
    assert choice.step_seconds == pytest.approx({1: 0.004, 2: 0.030, 4: 0.010})
    # one untimed first step at the most threads, every candidate warmed up, then timed in
    # rounds (interleaved)
    assert machine.calls[:4] == [4, 1, 2, 4] and set(machine.calls[4:7]) == {1}
    idle = FakeMachine({1: 0.010, 2: 0.0055})
    assert (
        choose_threads(idle.step, [1, 2], clock=idle.clock, set_threads=idle.set_threads).threads
        == 2
    )


def test_a_machine_that_slows_down_after_the_warm_ups_keeps_a_candidate():
    """Warm-ups of 1 s and 5 s drop 2 threads; then every step takes 30 s (the machine got
    busy). The race must keep its fastest live candidate, not empty itself (it divided by
    zero) over the dropped candidate's stale warm-up."""
    durations = iter([1.0, 1.0, 5.0] + [30.0] * 100)
    now = [0.0]

    def step() -> None:
        now[0] += next(durations)

    choice = choose_threads(step, [1, 2], budget_s=1e9, clock=lambda: now[0],
                            set_threads=lambda count: None)  # fmt: skip
    assert choice.threads in (1, 2)


def test_the_first_steps_one_time_costs_count_against_no_candidate():
    """A study's very first step is slow (lazy initialisation, first allocations): 1 thread
    was timed first, so its warm-up carried those costs, it was dropped as a loser and the
    costs were printed as its step time ("1: 33.9 ms/step, 2: 2.7 ms/step")."""
    machine = FakeMachine({1: 0.004, 2: 0.005})
    first = [True]
    base_step = machine.step

    def step() -> None:
        base_step()
        if first[0]:
            machine.now += 0.100  # one-time costs, 25x a step
            first[0] = False

    choice = choose_threads(step, [1, 2], clock=machine.clock, set_threads=machine.set_threads)
    assert choice.threads == 1
    assert choice.step_seconds == pytest.approx({1: 0.004, 2: 0.005})


def test_a_tie_goes_to_fewer_threads_and_the_budget_stops_rounds():
    machine = FakeMachine({1: 0.0100, 2: 0.0098})  # 2% apart: a tie
    choice = choose_threads(machine.step, [1, 2], rounds=5, clock=machine.clock,
                            set_threads=machine.set_threads)  # fmt: skip
    assert choice.threads == 1
    slow = FakeMachine({1: 1.0, 2: 2.0})  # a huge model: one round, then the budget is spent
    choose_threads(slow.step, [1, 2], rounds=5, steps_per_round=2, budget_s=0.6,
                   clock=slow.clock, set_threads=slow.set_threads)  # fmt: skip
    assert len(slow.calls) == 1 + 2 + 2 * 2  # first step, warm-ups and a single round
    busy = FakeMachine({1: 0.004, 2: 0.100})  # 25x slower: its warm-up step, then no more
    choice = choose_threads(busy.step, [1, 2], clock=busy.clock, set_threads=busy.set_threads)
    assert choice.threads == 1 and busy.calls == [2, 1, 2, 1, 1, 1]
    assert choice.step_seconds == pytest.approx({1: 0.004, 2: 0.100})
    rechecked = FakeMachine({1: 0.004, 2: 0.100})  # a re-check: no warm-up steps
    choose_threads(rechecked.step, [1, 2], warm=True, clock=rechecked.clock,
                   set_threads=rechecked.set_threads)  # fmt: skip
    assert rechecked.calls == [1, 1, 1, 2]  # a round of 1, one step of the loser, done
    with pytest.raises(ValueError):
        choose_threads(slow.step, [0])


def test_cpu_limits_from_affinity_and_cgroup_files(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None
    assert available_cpus([0, 1, 2, 3], cgroup_limit=1.5) == 2
    assert available_cpus([0, 1, 2, 3], cgroup_limit=None) == 4
    assert available_cpus([5], cgroup_limit=8.0) == 1
    assert candidate_counts(1) == (1,)
    assert candidate_counts(2) == (1, 2)
    assert candidate_counts(6) == (1, 2, 4, 6)
    assert candidate_counts(8) == (1, 2, 4, 8)


def test_step_watch_fires_when_the_step_time_degrades():
    watch = StepWatch(window=4, factor=1.5)
    assert not any(watch.observe(0.010) for _ in range(4))  # the baseline window
    assert not any(watch.observe(0.012) for _ in range(4))  # 1.2x: not degraded
    fired = [watch.observe(t) for t in (0.001, 0.030, 0.030, 0.030)]  # median 30 ms
    assert fired == [False, False, False, True]
    watch.reset()
    assert watch.baseline is None


def test_timing_step_trains_the_throwaway_trainer_only(small):
    from actlab.data.datasets import load_dataset

    config = ExperimentConfig(
        seeds=(0,), dataset=small, hidden=(8,), epochs=1, activations=("relu", "tanh")
    )
    data = DeviceData.from_dataset(load_dataset(small), "cpu")
    kept, throwaway = Trainer(config, data), Trainer(config, data)
    before = [p.detach().clone() for p in kept.optimizer.params]
    throwaway.timing_step()
    assert all(torch.equal(a, b) for a, b in zip(before, kept.optimizer.params, strict=True))
    assert not all(
        torch.equal(a, b) for a, b in zip(before, throwaway.optimizer.params, strict=True)
    )


def test_a_study_measures_records_and_estimates(small, tmp_path):
    config = ExperimentConfig(seeds=(0,), dataset=small, hidden=(8,), epochs=2, activations=("relu",),
                              device="cpu", diagnostics=False)  # fmt: skip
    plans, out = [], tmp_path / "run"
    run_study(config, out=out, on_plan=plans.append)
    (plan,) = plans
    assert plan.threads is not None and not plan.threads.forced
    assert plan.threads.threads in candidate_counts(available_cpus())
    assert set(plan.threads.step_seconds) == set(candidate_counts(available_cpus()))
    assert plan.estimate_s is not None and plan.estimate_s > 0
    assert plan.steps_total == 2 * 4 and plan.describe().startswith("estimate: ")
    environment = json.loads((out / "config.json").read_text())["environment"]
    assert environment["threads"] == plan.threads.threads
    assert environment["threads_chosen"].startswith("measured")
    forced = ThreadKeeper(config.replace(threads=1), None, torch.device("cpu"))
    assert forced.choice.forced and forced.how_chosen().startswith("forced")


def test_the_cli_prints_the_choice_the_estimate_and_time_per_epoch(small, tmp_path, capsys):
    code = main(["compare", "--dataset", small, "--hidden", "8", "--epochs", "2",
                 "--activations", "relu", "--seeds", "1", "--no-report", "--out", str(tmp_path / "r")])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith("threads: ") and "CPUs, the fastest measured" in out[0]
    assert out[1].startswith("step kernels: ")
    assert out[2].startswith("estimate: ") and "for 8 steps" in out[2]
    timing = [line for line in out if line.startswith("progress: ")]
    assert timing[0].startswith("progress: 1/2 epochs (50% of the steps), ")
    assert timing[0].endswith(" left") and " elapsed, about " in timing[0]
    assert timing[1].startswith("progress: 2/2 epochs (100% of the steps), ")
    assert timing[1].endswith(" elapsed")
    main(["compare", "--dataset", small, "--hidden", "8", "--epochs", "2", "--threads", "1",
          "--activations", "relu", "--seeds", "1", "--no-report", "--out", str(tmp_path / "f")])  # fmt: skip
    assert capsys.readouterr().out.startswith("threads: 1 (--threads;")


def test_durations_read_naturally():
    assert [format_duration(s) for s in (3.21, 59.4, 125, 7300)] == [
        "3.2 s", "59 s", "2 min 5 s", "2 h 1 min",
    ]  # fmt: skip
    choice = ThreadChoice(2, False, 2, {1: 0.01, 2: 0.005}, 0.2)
    assert choice.describe().startswith("threads: 2 of 2 CPUs, the fastest measured (1: 10.0 ms")


def test_re_checks_during_training_change_no_number(small, tmp_path, monkeypatch):
    import actlab.study.driver

    config = ExperimentConfig(dataset=small, hidden=(8,), epochs=2, seeds=(0, 1), dropout=0.2, batch_size=16,
                              activations=("relu", "tanh"), device="cpu")  # fmt: skip
    plain = run_study(config, out=tmp_path / "plain").metrics
    # a watch that finds every window degraded: the thread count is measured again and again
    monkeypatch.setattr(actlab.study.driver, "StepWatch", lambda: StepWatch(window=2, factor=0.0))
    rechecks = []
    checked = run_study(config, out=tmp_path / "checked",
                        on_threads=lambda choice, why: rechecks.append(why)).metrics  # fmt: skip
    assert len(rechecks) >= 2 and set(rechecks) == {"the step time degraded"}
    columns = [c for c in plain.columns if c != "epoch_time_s"]
    assert plain[columns].equals(checked[columns])


NET = '''
from torch import nn


def build(act):
    """BatchNorm (running statistics) and dropout (per-member masks): state a timing step
    would change."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), act(), nn.Flatten(),
        nn.Dropout(0.3), nn.Linear(4 * 36, 3),
    )
'''


@pytest.mark.parametrize("model", ["mlp", "net:vmap", "net:loop"])
@pytest.mark.parametrize("threads", [1, None])
def test_the_measured_trainer_trains_exactly_as_a_fresh_one(small, tmp_path, model, threads):
    """The study trains the trainer its thread choice timed (built and checked once), with
    the timing steps undone: every metric and diagnostic equals a fresh trainer's, bit for
    bit (same process, same thread count: the same operations in the same order)."""
    from actlab.data.datasets import load_dataset
    from actlab.engine.trainer import train

    options = {"hidden": (8,)}
    if model != "mlp":
        (tmp_path / "net.py").write_text(NET)
        reference = f"{tmp_path / 'net.py'}:build"
        options = {"model": reference, "stacking": model.split(":")[1]}
    config = ExperimentConfig(
        seeds=(0, 1), dataset=small, epochs=2, activations=("relu", "tanh"), device="cpu",
        threads=threads, diagnostics=True, **options,
    )  # fmt: skip
    studied = run_study(config, out=tmp_path / "run").metrics
    torch.set_num_threads(json.loads((tmp_path / "run" / "config.json").read_text())
                          ["environment"]["threads"])  # fmt: skip
    fresh = [row for result in train(config, load_dataset(small)) for row in result.metrics]
    assert len(fresh) == len(studied) == 2 * 2 * 2
    for row in fresh:
        mine = studied[(studied.member == row["member"]) & (studied.epoch == row["epoch"])]
        for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert mine[name].item() == row[name], (name, row["member"], row["epoch"])


def test_start_up_builds_the_model_once_and_times_no_step_with_threads_given(
    small, tmp_path, monkeypatch
):
    """Before: a throwaway trainer (a second build of every member, its checks and its
    memory) and five timing steps, for an estimate, on a study whose thread count was given."""
    import actlab.study.driver as driver

    built, timed = [], []
    make = driver.make_trainer

    def counting_make(*args, **kwargs):
        trainer = make(*args, **kwargs)
        built.append(trainer)
        timing_step = trainer.timing_step
        trainer.timing_step = lambda: timed.append(1) or timing_step()
        return trainer

    monkeypatch.setattr(driver, "make_trainer", counting_make)
    config = ExperimentConfig(seeds=(0,), dataset=small, hidden=(8,), epochs=2, device="cpu",
                              activations=("relu",), threads=1, diagnostics=False)  # fmt: skip
    events = []
    run_study(config, out=tmp_path / "run", on_plan=events.append,
              on_step=lambda info: events.append(info.step))  # fmt: skip
    assert len(built) == 1 and not timed  # the estimate: from the study's own second step
    assert events[:3] == [1, events[1], 2] and events[1].estimate_s > 0
    assert events[1].threads.forced and events[1].threads.best_step_s > 0
    # One step an epoch: the plan comes with the first step, before the first epoch ends.
    events.clear()
    run_study(config.replace(batch_size=256), on_plan=events.append,
              on_epoch=lambda result: events.append("epoch"),
              on_step=lambda info: events.append(info.step))  # fmt: skip
    assert events[0].estimate_s > 0 and events[1:] == [1, "epoch", 1, "epoch"]
