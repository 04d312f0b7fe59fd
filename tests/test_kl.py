"""KL divergences against torch.distributions and closed forms."""

import math

import pytest
import torch as th
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from rl_selfdistill.distill.kl import bernoulli_kl, categorical_kl, gaussian_kl, multi_categorical_kl, q_softmax_kl

TOL = {"atol": 1e-6, "rtol": 1e-6}


@pytest.fixture
def generator():
    return th.Generator().manual_seed(0)


def _logits(generator, scale, shape=(64, 7)):
    return th.randn(*shape, generator=generator, dtype=th.float64) * scale


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 30.0])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_categorical_matches_torch(generator, scale, temperature):
    teacher, student = _logits(generator, scale), _logits(generator, scale)
    expected = kl_divergence(Categorical(logits=teacher / temperature), Categorical(logits=student / temperature))
    th.testing.assert_close(categorical_kl(teacher, student, temperature), expected, **TOL)
    reverse = kl_divergence(Categorical(logits=student / temperature), Categorical(logits=teacher / temperature))
    th.testing.assert_close(categorical_kl(teacher, student, temperature, "reverse"), reverse, **TOL)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_categorical_gradients_match_autograd_of_torch(generator, direction, temperature):
    """The closed-form backward gives the gradients autograd computes through torch.distributions."""
    teacher, student = _logits(generator, 3.0).requires_grad_(), _logits(generator, 3.0).requires_grad_()
    weights = th.rand(teacher.shape[0], generator=generator, dtype=th.float64)  # a non-uniform upstream gradient
    (weights * categorical_kl(teacher, student, temperature, direction)).sum().backward()
    ours = (teacher.grad.clone(), student.grad.clone())
    teacher.grad, student.grad = None, None
    p, q = (teacher, student) if direction == "forward" else (student, teacher)
    reference = kl_divergence(Categorical(logits=p / temperature), Categorical(logits=q / temperature))
    (weights * reference).sum().backward()
    th.testing.assert_close(ours, (teacher.grad, student.grad), **TOL)


def test_categorical_is_stable_for_extreme_logits(generator):
    """float32 logits of +-1e4: torch's KL gives inf/nan where a probability underflows, ours stays exact."""
    teacher64, student64 = _logits(generator, 1e4), _logits(generator, 1e4)
    reference = categorical_kl(teacher64, student64)  # float64: no underflow in log space either
    result = categorical_kl(teacher64.float(), student64.float())
    assert th.isfinite(result).all()
    th.testing.assert_close(result.double(), reference, rtol=1e-5, atol=1e-3)
    identical = categorical_kl(teacher64.float(), teacher64.float())
    assert th.equal(identical, th.zeros_like(identical))


def test_multi_categorical_is_sum_of_parts(generator):
    dims = (3, 5, 2)
    teacher, student = _logits(generator, 3.0, (32, sum(dims))), _logits(generator, 3.0, (32, sum(dims)))
    expected = sum(
        kl_divergence(Categorical(logits=t), Categorical(logits=s))
        for t, s in zip(teacher.split(dims, -1), student.split(dims, -1))
    )
    th.testing.assert_close(multi_categorical_kl(teacher, student, dims), expected, **TOL)


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_bernoulli_matches_torch(generator, scale):
    teacher, student = _logits(generator, scale), _logits(generator, scale)
    expected = kl_divergence(Bernoulli(logits=teacher), Bernoulli(logits=student)).sum(-1)
    th.testing.assert_close(bernoulli_kl(teacher, student), expected, **TOL)
    tempered = kl_divergence(Bernoulli(logits=teacher / 2.0), Bernoulli(logits=student / 2.0)).sum(-1)
    th.testing.assert_close(bernoulli_kl(teacher, student, temperature=2.0), tempered, **TOL)


@pytest.mark.parametrize("temperature", [1.0, 0.3, 4.0])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gaussian_matches_torch_and_sums_dimensions(generator, temperature, direction):
    shape = (64, 6)
    mean_t, mean_s = _logits(generator, 2.0, shape), _logits(generator, 2.0, shape)
    log_std_t, log_std_s = _logits(generator, 1.0, shape), _logits(generator, 1.0, shape)
    scale = math.sqrt(temperature)
    teacher = Normal(mean_t, log_std_t.exp() * scale)
    student = Normal(mean_s, log_std_s.exp() * scale)
    pair = (teacher, student) if direction == "forward" else (student, teacher)
    expected = kl_divergence(*pair).sum(-1)
    result = gaussian_kl(mean_t, log_std_t, mean_s, log_std_s, temperature, direction)
    th.testing.assert_close(result, expected, **TOL)
    per_dimension = [gaussian_kl(mean_t[:, [d]], log_std_t[:, [d]], mean_s[:, [d]], log_std_s[:, [d]]) for d in range(6)]
    th.testing.assert_close(gaussian_kl(mean_t, log_std_t, mean_s, log_std_s), th.stack(per_dimension, -1).sum(-1), **TOL)


def test_gaussian_closed_form_and_tiny_std():
    # KL(N(0, 1) || N(1, 2^2)) = log 2 + (1 + 1) / 8 - 1/2, by hand.
    kl = gaussian_kl(th.zeros(1, 1), th.zeros(1, 1), th.ones(1, 1), th.full((1, 1), math.log(2.0)))
    assert kl.item() == pytest.approx(math.log(2.0) + 2.0 / 8.0 - 0.5, abs=1e-6)
    # std = e^-40 underflows float32 to zero when exponentiated first; in log space it is exact.
    mean = th.zeros(4, 3)
    tiny = th.full((4, 3), -40.0)
    result = gaussian_kl(mean, tiny, mean + 1e-18, tiny)
    assert th.isfinite(result).all()
    expected = 3 * 0.5 * (1e-18) ** 2 * math.exp(80.0)
    th.testing.assert_close(result.double(), th.full((4,), expected, dtype=th.float64), rtol=1e-4, atol=0)
    assert th.equal(gaussian_kl(mean, tiny, mean, tiny), th.zeros(4))


def test_q_softmax_kl_is_boltzmann_kl(generator):
    q_teacher, q_student = _logits(generator, 5.0), _logits(generator, 5.0)
    expected = kl_divergence(Categorical(logits=q_teacher / 0.1), Categorical(logits=q_student / 0.1))
    th.testing.assert_close(q_softmax_kl(q_teacher, q_student, temperature=0.1), expected, **TOL)


def test_batch_mean_does_not_scale_with_batch_size(generator):
    teacher, student = _logits(generator, 2.0), _logits(generator, 2.0)
    small = categorical_kl(teacher, student).mean()
    large = categorical_kl(teacher.repeat(16, 1), student.repeat(16, 1)).mean()
    th.testing.assert_close(small, large, **TOL)


@pytest.mark.parametrize("shape", [(64, 7), (3, 64, 7)])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_mean_reduction_is_the_mean_of_per_sample_kls(generator, shape, direction):
    teacher, student = _logits(generator, 2.0, shape), _logits(generator, 2.0, shape).requires_grad_()
    per_sample = q_softmax_kl(teacher, student, 0.5, direction)
    assert per_sample.shape == shape[:-1]
    mean = q_softmax_kl(teacher, student, 0.5, direction, reduction="mean")
    assert mean.shape == ()
    th.testing.assert_close(mean, per_sample.mean(), **TOL)
    (gradient_of_mean,) = th.autograd.grad(mean, student)
    (gradient_of_per_sample,) = th.autograd.grad(per_sample.mean(), student)
    th.testing.assert_close(gradient_of_mean, gradient_of_per_sample, **TOL)
    with pytest.raises(ValueError, match="reduction"):
        categorical_kl(teacher, student, reduction="sum")


def test_unknown_direction_is_rejected(generator):
    with pytest.raises(ValueError, match="direction"):
        categorical_kl(_logits(generator, 1.0), _logits(generator, 1.0), direction="sideways")


def test_bernoulli_is_stable_for_extreme_logits(generator):
    """torch's Bernoulli KL is inf once a probability rounds to 1; the log-sigmoid form stays finite."""
    teacher, student = _logits(generator, 50.0), _logits(generator, 50.0)
    result = bernoulli_kl(teacher.float(), student.float())
    assert th.isfinite(result).all()
    th.testing.assert_close(result.double(), bernoulli_kl(teacher, student), rtol=1e-4, atol=1e-3)


def test_fused_categorical_batch_mean_equals_the_general_kl():
    from stable_baselines3.common.distributions import CategoricalDistribution

    from rl_selfdistill.distill.config import DistillConfig
    from rl_selfdistill.distill.policy_kl import PolicyKL

    generator = th.Generator().manual_seed(0)
    teacher = th.randn(64, 6, generator=generator).log_softmax(-1)
    raw_student = (3 * th.randn(64, 6, generator=generator)).requires_grad_(True)
    student = raw_student.log_softmax(-1)  # what Categorical.logits holds, as a function of the network's output
    fused = PolicyKL(CategoricalDistribution, temperature=1.0, direction="forward")
    general = PolicyKL(CategoricalDistribution, temperature=1.0 + 1e-12, direction="forward")  # takes the general path
    assert fused._fused_categorical and not general._fused_categorical
    value = fused.batch_mean(teacher, student)
    th.testing.assert_close(value, categorical_kl(teacher, student).mean())
    # Gradients agree with respect to the network's outputs (the normalisation's Jacobian projects the difference out).
    (grad_fused,) = th.autograd.grad(value, raw_student, retain_graph=True)
    (grad_general,) = th.autograd.grad(categorical_kl(teacher, student).mean(), raw_student)
    th.testing.assert_close(grad_fused, grad_general)
    assert DistillConfig().distill_temperature == 1.0  # the default takes the fused path
