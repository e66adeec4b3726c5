"""The MLBench learning-rate schedule: warm-up, milestones, scaling with workers."""
import pytest
import torch

from raybench.spec.config import Schedule
from raybench.spec.schedule import base_lr, lr_at, lr_factor, peak_lr

S = Schedule(batch_per_worker=128, lr_per_256=0.1, warmup_epochs=5, milestones=[82, 109], gamma=0.1, epochs=164)


def test_peak_lr_scales_linearly_with_workers():
    assert peak_lr(S, 1) == pytest.approx(0.05)
    assert peak_lr(S, 2) == pytest.approx(0.1)
    assert peak_lr(S, 8) == pytest.approx(0.4)
    assert base_lr(S) == pytest.approx(0.05)


def test_warmup_is_linear_from_the_one_worker_lr():
    spe = 10
    assert lr_at(0, spe, S, 8) == pytest.approx(0.05)
    assert lr_at(25, spe, S, 8) == pytest.approx(0.05 + (0.4 - 0.05) * 2.5 / 5)
    assert lr_at(50, spe, S, 8) == pytest.approx(0.4)  # warm-up ends after 5 epochs
    lrs = [lr_at(s, spe, S, 8) for s in range(51)]
    assert all(b > a for a, b in zip(lrs, lrs[1:-1], strict=False))


def test_one_worker_has_a_flat_warmup():
    assert {round(lr_at(s, 7, S, 1), 12) for s in range(0, 7 * 82)} == {0.05}


def test_milestones_multiply_by_gamma():
    spe = 10
    assert lr_at(82 * spe - 1, spe, S, 4) == pytest.approx(0.2)
    assert lr_at(82 * spe, spe, S, 4) == pytest.approx(0.02)
    assert lr_at(109 * spe, spe, S, 4) == pytest.approx(0.002)
    assert lr_at(163 * spe, spe, S, 4) == pytest.approx(0.002)


def test_no_warmup():
    s = S.model_copy(update={"warmup_epochs": 0})
    assert lr_at(0, 5, s, 4) == pytest.approx(0.2)


def test_lambda_lr_follows_lr_at():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=peak_lr(S, 4))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(S, 4, 3))
    seen = []
    for _step in range(3 * 90):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, 3, S, 4) for s in range(3 * 90)])


def test_bad_arguments():
    with pytest.raises(ValueError):
        lr_at(0, 0, S, 1)
