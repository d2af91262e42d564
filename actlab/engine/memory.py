"""The memory a study needs, estimated from its shapes before anything is allocated.

A width or a member count typed with an extra zero should fail at once with one line that
says how much memory it needs, not after minutes with an allocator traceback (or the OOM
killer). The estimate counts float32 tensors:

- the dataset as floats on the device: (train + val + test) x input size;
- per member, its parameters P, their gradients and two optimizer moments (Adam), and the
  step's work buffers: 5 P;
- per step, the activations of one batch of every member: for each layer the
  pre-activation, the activation and their gradients, 4 x batch x units;
- the evaluation and probe chunks, bounded by `ACTIVATION_BUDGET` elements.

It is a lower bound of what training allocates, so a study it refuses could not run; one it
lets through may still be tight.
"""

from __future__ import annotations

import math
import os

from actlab.config import ExperimentConfig
from actlab.errors import ConfigError
from actlab.nn.models import StackedCNN

FLOAT_BYTES = 4
# At most this many elements in one layer's activations of all members at once (64 MiB of
# float32): a CNN's conv layer has ~25k units per sample and member, so its evaluation
# chunks (and its probe batch) shrink to stay inside it instead of allocating gigabytes.
ACTIVATION_BUDGET = 1 << 24


def layer_sizes(
    config: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int, depth: int | None
) -> tuple[int, int]:
    """(parameters of one member, activation units per sample of one member)."""
    hidden = config.hidden_for(depth)
    channels, height, width = (tuple(input_shape) + (1, 1, 1))[:3]
    if config.model == "cnn":
        c1, c2 = StackedCNN.CHANNELS
        flat = c2 * (height // 4) * (width // 4)
        params = (c1 * channels * 9 + c1) + (c2 * c1 * 9 + c2)
        params += flat * hidden[0] + hidden[0] + hidden[0] * num_classes + num_classes
        units = c1 * height * width + c2 * (height // 2) * (width // 2) + hidden[0] + num_classes
        return params, units
    sizes = [math.prod(input_shape), *hidden, num_classes]
    params = sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))
    return params, sum(sizes[1:])


def study_bytes(
    config: ExperimentConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    samples: int,
    train_size: int,
) -> int:
    """Bytes a study needs at least (see the module docstring); the largest depth decides."""
    members = len(config.seeds) * len(config.activations) * len(config.lrs)
    batch = max(1, min(config.batch_size, train_size))
    data = samples * math.prod(input_shape)
    most = 0
    for depth in config.depth_list:
        params, units = layer_sizes(config, input_shape, num_classes, depth)
        state = 5 * members * params
        step = 4 * batch * members * units + batch * len(config.seeds) * math.prod(input_shape)
        most = max(most, state + step)
    return FLOAT_BYTES * (data + most + 4 * ACTIVATION_BUDGET)


def available_bytes(device) -> int | None:
    """Memory free for a new allocation on `device` (CPU: MemAvailable of /proc/meminfo;
    CUDA: the driver's free memory); None when it cannot be told."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def check_study_memory(config: ExperimentConfig, dataset, device) -> None:
    """Refuse, with one line saying how much memory it needs, a study that cannot fit.

    A user's own network is measured when it is built instead (its layers are not known
    from the config): see actlab.engine.vmap_stack.StackedUserModel. The GPT's memory is
    measured by benchmarks/lm.py, not estimated here."""
    if config.is_user_model or config.model == "gpt":
        return
    samples = dataset.train_size + dataset.val_size + dataset.test_size
    need = study_bytes(
        config, tuple(dataset.input_shape), int(dataset.num_classes), samples, dataset.train_size
    )
    free = available_bytes(device)
    if free is not None and need > free:
        members = len(config.seeds) * len(config.activations) * len(config.lrs)
        params, _ = layer_sizes(
            config, tuple(dataset.input_shape), int(dataset.num_classes), config.depth_list[-1]
        )
        raise ConfigError(
            f"this study needs at least {gib(need)} of memory ({members} members x "
            f"{params:,} parameters, batch {config.batch_size}) but {device} has {gib(free)} "
            "free; use narrower --hidden, fewer --seeds/--activations/--lr or a smaller --batch-size"
        )


def check_tensor_memory(elements: int, element_bytes: int, copies: int, device, what: str) -> None:
    """Refuse `copies` tensors of `elements` that cannot fit on `device` (actlab bench)."""
    need = elements * element_bytes * copies
    free = available_bytes(device)
    if free is not None and need > free:
        raise ConfigError(
            f"{what} needs at least {gib(need)} of memory but {device} has {gib(free)} free; "
            "choose a smaller size"
        )


# === a user's own network ================================================================

# Bytes of tensors saved for backward one member's diagnostics probe may hold: the probe
# batch is sized from one member (never from the member count), at most PROBE_SIZE samples.
PROBE_BUDGET_BYTES = 256 * 2**20


def user_member_bytes(weight_bytes: int, saved_bytes_per_sample: float, batch_size: int) -> float:
    """Bytes one member of a user's network needs while training: its weights four times
    (weights, gradients, Adam's two moments) plus the tensors autograd saves for backward on
    one batch (measured per sample, see `saved_bytes`)."""
    return 4 * weight_bytes + saved_bytes_per_sample * max(1, batch_size)


def saved_bytes(run) -> int:
    """Bytes of the tensors autograd saves for backward while `run()` runs (a forward with
    trainable leaves), weights excluded (counted apart). Works on the meta device (shapes
    only, nothing allocated): tensors are told apart by storage there and by data_ptr on a
    real device, so a tensor saved twice counts once."""
    import torch

    saved: dict[object, int] = {}

    def pack(tensor):
        if not (tensor.is_leaf and tensor.requires_grad):
            key = id(tensor) if tensor.is_meta else tensor.data_ptr()
            saved[key] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(saved.values())


def check_user_model_memory(
    reference: str, per_member: float, members: int, batch_size: int, device
) -> None:
    """Refuse, before the members are built, a study of `members` members of `per_member`
    bytes each (`user_member_bytes`) that cannot fit in 80% of the free memory; the message
    says how many members would fit."""
    free = available_bytes(device)
    needed = per_member * members
    if free is not None and needed > 0.8 * free:
        fit = int(0.8 * free // per_member)
        raise ConfigError(
            f"the {members} members of {reference} need about {gib(needed)} ({per_member / 2**20:.0f} "
            f"MiB each: weights, gradients, Adam state and a batch of {batch_size}), but "
            f"{gib(free)} are free; about {fit} members would fit: use fewer --seeds or "
            "--activations, or a smaller --batch-size"
        )


def probe_samples(saved_bytes_per_sample: float, most: int) -> int:
    """The diagnostics probe's sample count for a user's network: what one member's saved
    tensors allow within PROBE_BUDGET_BYTES (8 to `most`), whatever the member count."""
    if saved_bytes_per_sample <= 0:
        return most
    return int(max(8, min(most, PROBE_BUDGET_BYTES // saved_bytes_per_sample)))


def samples_within_budget(units_per_sample: int, members: int, most: int) -> int:
    """How many samples fit ACTIVATION_BUDGET for one layer of all members (1 to `most`)."""
    return max(1, min(most, ACTIVATION_BUDGET // max(1, units_per_sample * members)))
