"""Language models: text splits, the stacked GPT against plain GPTs trained one by one."""

import math

import pytest
import torch

from actlab.config import ExperimentConfig, members_for
from actlab.data import text
from actlab.engine.lm_trainer import LMTrainer, random_windows
from actlab.errors import ConfigError, DataError
from actlab.nn.gpt import GPT, StackedGPT, ffn_width, parameter_count
from actlab.nn.schedule import lr_factor
from actlab.tasks import CLASSIFY, LM, bits_per_character


@pytest.fixture
def corpus(tmp_path):
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "é"]
    rng = torch.Generator().manual_seed(0)
    picks = torch.randint(0, len(words), (3000,), generator=rng).tolist()
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(words[i] for i in picks), encoding="utf-8")
    return path


def lm_config(corpus, **changes) -> ExperimentConfig:
    values = dict(
        dataset=f"text:{corpus}", model="gpt", activations=("relu", "swiglu"), seeds=(0, 1),
        width=16, layers=2, heads=2, context=12, batch_size=4, epochs=1, diagnostics=False,
        device="cpu",
    )  # fmt: skip
    values.update(changes)
    return ExperimentConfig(**values)


# --- tasks ----------------------------------------------------------------------------------


def test_task_follows_from_the_dataset(corpus):
    assert lm_config(corpus).task is LM
    assert ExperimentConfig().task is CLASSIFY
    assert LM.direction == "lower is better" and not LM.higher_is_better
    assert bits_per_character(math.log(2)) == pytest.approx(1.0)
    assert "bpc" in LM.format(1.0)


def test_gpt_needs_a_text_dataset_and_text_needs_gpt(corpus):
    with pytest.raises(ConfigError, match="text:PATH"):
        ExperimentConfig(model="gpt")
    with pytest.raises(ConfigError, match="--net gpt"):
        ExperimentConfig(dataset=f"text:{corpus}")
    with pytest.raises(ConfigError, match="multiple of --heads"):
        lm_config(corpus, width=10, heads=4)


# --- text data ------------------------------------------------------------------------------


@pytest.mark.parametrize("val_size", [0, 0.2, 50])
def test_text_splits_are_consecutive_and_never_overlap(corpus, val_size):
    data = corpus.read_bytes()
    train, val, test = text.split_bytes(len(data), val_size)
    assert train.start == 0 and train.stop == val.start and val.stop == test.start
    assert test.stop == len(data)
    assert test.stop - test.start == round(len(data) * text.TEST_FRACTION)
    dataset = text.load_text(f"text:{corpus}", context=12, val_size=val_size)
    joined = torch.cat([dataset.train_bytes, dataset.val_bytes, dataset.test_bytes])
    assert joined.numpy().tobytes() == data  # every byte once, in order


def test_windows_stay_inside_their_split(corpus):
    dataset = text.load_text(f"text:{corpus}", context=12, val_size=0.1)
    for split in (dataset.train_bytes, dataset.val_bytes, dataset.test_bytes):
        x, y = text.windows(split, 12)
        assert x.shape == y.shape == (text.window_count(len(split), 12), 12)
        # targets are the next bytes, and every byte but the first of the split is one once
        assert torch.equal(y.reshape(-1), split[1 : y.numel() + 1])
        assert torch.equal(x.reshape(-1), split[: x.numel()])
    # random training windows never leave the train split
    g = [torch.Generator().manual_seed(0)]
    tokens = dataset.train_bytes.long()
    x, y = random_windows(tokens, g, 500, 12)
    assert x.shape == (1, 500, 12) and torch.equal(x[..., 1:], y[..., :-1])


def test_text_errors_are_one_line(tmp_path):
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"abc\xff\xfe" * 100)
    with pytest.raises(DataError, match="not UTF-8.*byte 3"):
        text.load_text(f"text:{binary}", context=8)
    with pytest.raises(DataError, match="not found"):
        text.load_text(f"text:{tmp_path / 'missing.txt'}", context=8)
    short = tmp_path / "s.txt"
    short.write_text("hello world")
    with pytest.raises(DataError, match="smaller --context"):
        text.load_text(f"text:{short}", context=64)


def test_stdlib_corpus_is_fixed_and_fingerprinted():
    a = text.load_text("text:stdlib", context=32)
    b = text.load_text("text:stdlib", context=32)
    assert a.fingerprint() == b.fingerprint()
    assert len(a.train_bytes) > 100_000
    assert a.summary()["fingerprint"].startswith("sha256:")


# --- the stacked model against plain GPTs -----------------------------------------------------


def test_gated_ffn_has_two_thirds_of_the_hidden_units_and_equal_parameters():
    assert ffn_width("relu", 48) == 192 and ffn_width("swiglu", 48) == 128
    plain, gated = GPT("gelu", width=48), GPT("swiglu", width=48)
    # the same weights up to the FFN's biases (2F + d against F + d)
    assert abs(parameter_count(plain) - parameter_count(gated)) <= 4 * 48


def test_stacked_forward_is_each_plain_member(corpus):
    config = lm_config(corpus, activations=("relu", "geglu", "relu2"))
    members = members_for(config)
    model = StackedGPT(config, members)
    tokens = torch.randint(0, 256, (2, 3, 12))
    logits = model(tokens)
    for k, member in enumerate(members):
        plain = GPT.from_config(config, member.activation, member.seed)
        plain.load_state_dict(model.member_state_dict(k))
        expected = plain(tokens[config.seeds.index(member.seed)])
        torch.testing.assert_close(logits[k], expected, rtol=1e-5, atol=1e-5)


def test_stacked_losses_and_gradients_are_those_of_cross_entropy_on_the_logits(corpus):
    """`StackedGPT.losses` (fused head + loss, members activation-major inside) against
    ``F.cross_entropy`` on `forward`'s logits through autograd: values and every gradient,
    gated and plain members, two seeds (float64: the two summation orders agree to 1e-9)."""
    config = lm_config(corpus, activations=("relu", "swiglu", "gelu"))
    model = StackedGPT(config, members_for(config)).double()
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 256, (2, 3, 12), generator=generator)
    targets = torch.randint(0, 256, (2, 3, 12), generator=generator)
    upstream = torch.linspace(0.5, 2.0, model.num_members, dtype=torch.float64)
    params = list(model.parameters())
    got = model.losses(tokens, targets)
    got_grads = torch.autograd.grad((got * upstream).sum(), params)
    logits = model(tokens)
    member_targets = targets.index_select(0, model.member_seed)
    flat = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 256), member_targets.reshape(-1), reduction="none"
    )
    want = flat.view(model.num_members, -1).mean(dim=1)
    want_grads = torch.autograd.grad((want * upstream).sum(), params)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def plain_run(config, windows, steps):
    """K plain GPTs, each with torch.optim.AdamW, LambdaLR and clip_grad_norm_."""
    total = steps
    losses, models = [], []
    for member in members_for(config):
        model = GPT.from_config(config, member.activation, member.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=member.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: lr_factor(t, total, config.schedule, config.warmup)
        )
        seed_index = config.seeds.index(member.seed)
        mine = []
        for x, y in windows:
            logits = model(x[seed_index])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, 256), y[seed_index].reshape(-1)
            )
            opt.zero_grad()
            loss.backward()
            if config.clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            opt.step()
            sched.step()
            mine.append(loss.item())
        losses.append(mine)
        models.append(model)
    return torch.tensor(losses), models


@pytest.mark.parametrize(
    "schedule, warmup, clip, lrs",
    [
        ("constant", 0, None, (3e-3,)),
        pytest.param("cosine", 10, 0.5, (3e-3, 1e-3), marks=pytest.mark.slow),
        ("cosine", 30, 0.05, (3e-3,)),
    ],
)
def test_stacked_gpt_trains_as_plain_gpts_with_torch_optim(corpus, schedule, warmup, clip, lrs):
    """100 steps, gated and plain members, two seeds: the same losses and weights as K
    plain models trained one by one with torch.optim.AdamW, LambdaLR and clip_grad_norm_
    (float32; summation orders differ, so close, not equal).

    The key bias is left out of the weight comparison: attention is invariant to it (it
    adds q.b_k to every score of a query), so its true gradient is 0 and Adam turns the
    float32 round-off it gets (~1e-9) into steps of size lr in directions that differ
    between any two summation orders. Its effect on the loss is nil, which the losses
    check."""
    steps = 100
    config = lm_config(
        corpus, optimizer="adamw", weight_decay=0.01, lrs=lrs,
        schedule=schedule, warmup=warmup, clip=clip,
    )  # fmt: skip
    dataset = text.load_text(config.dataset, context=config.context)
    trainer = LMTrainer(config, dataset)
    trainer.total_steps = steps
    generators = [torch.Generator().manual_seed(s) for s in config.seeds]
    windows = [
        random_windows(trainer.data.train_tokens, generators, config.batch_size, config.context)
        for _ in range(steps)
    ]
    stacked = torch.stack([trainer.step(x, y) for x, y in windows], dim=1)
    expected, models = plain_run(config, windows, steps)
    torch.testing.assert_close(stacked, expected, rtol=1e-5, atol=1e-5)
    assert stacked[:, -1].mean() < stacked[:, 0].mean() - 1.0  # it learned
    width = config.width
    for k, model in enumerate(models):
        got = trainer.model.member_state_dict(k)
        for name, value in model.state_dict().items():
            if name.endswith("attn.qkv.bias"):  # the key bias (see the docstring)
                got[name][width : 2 * width] = value[width : 2 * width]
            torch.testing.assert_close(got[name], value, rtol=1e-4, atol=2e-5, msg=name)


def test_schedules_and_clipping_are_refused_where_they_would_be_ignored():
    with pytest.raises(ConfigError, match="--net gpt only"):
        ExperimentConfig(schedule="cosine")
    with pytest.raises(ConfigError, match="--net gpt only"):
        ExperimentConfig(clip=1.0)


def test_lr_factor_warms_up_linearly_then_decays_to_zero():
    total, warmup = 100, 10
    factors = [lr_factor(t, total, "cosine", warmup) for t in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[warmup - 1] == pytest.approx(1.0)
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:-1], factors[warmup + 1 :], strict=True))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_factor(50, total, "constant", warmup) == 1.0
