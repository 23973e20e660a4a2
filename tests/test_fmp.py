"""Fractional max-pooling (trainables/fractional_pooling.py) and the fmp_net trainable (trainables/fmp_net.py):
the four region rules, the two kinds of sequence, agreement with torch's layer, fresh/fixed sequences, test-time
averaging, the network's sizes, and that the net learns in a bounded budget. No Ray needed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainables import fractional_pooling, registry
from trainables.fmp_net import FMPNet, build
from trainables.fractional_pooling import (
    FractionalMaxPool,
    fmp_output_size,
    fmp_span,
    max_pool_regions,
    pseudorandom_boundaries,
    random_boundaries,
    region_argmax,
    regions,
    torch_windows,
)

KNOWN = torch.tensor([[0, 1, 3, 4, 6]])  # increments 1, 2, 1, 2


def brute_force(x: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor], cols: tuple[torch.Tensor, torch.Tensor]):
    """The region max by loops over pixels, the definition the vectorised layer must equal."""
    out = torch.empty(x.shape[0], x.shape[1], rows[0].shape[1], cols[0].shape[1], dtype=x.dtype)
    for b in range(x.shape[0]):
        rb, cb = min(b, rows[0].shape[0] - 1), min(b, cols[0].shape[0] - 1)
        for i in range(rows[0].shape[1]):
            for j in range(cols[0].shape[1]):
                r0, r1, c0, c1 = int(rows[0][rb, i]), int(rows[1][rb, i]), int(cols[0][cb, j]), int(cols[1][cb, j])
                out[b, :, i, j] = x[b, :, r0:r1 + 1, c0:c1 + 1].amax(dim=(1, 2))
    return out


# ------------------------------------------------------------------------------------------------- region rules
def test_region_rules_on_a_known_sequence() -> None:
    start, end = regions(KNOWN, overlapping=False)  # [a_{i-1}, a_i - 1]
    assert start.tolist() == [[0, 1, 3, 4]] and end.tolist() == [[0, 2, 3, 5]]
    start, end = regions(KNOWN, overlapping=True)  # [a_{i-1}, a_i]
    assert start.tolist() == [[0, 1, 3, 4]] and end.tolist() == [[1, 3, 4, 6]]


@pytest.mark.parametrize("overlapping", [False, True])
@pytest.mark.parametrize("draw", [random_boundaries, pseudorandom_boundaries])
def test_regions_cover_every_row_and_overlap_only_at_boundaries(draw, overlapping: bool) -> None:  # noqa: ANN001
    n_in = 25
    n_out, span = fmp_output_size(n_in, math.sqrt(2), overlapping), fmp_span(n_in, overlapping)
    start, end = regions(draw(50, n_out, span, torch.Generator().manual_seed(1)), overlapping)
    sizes = end - start + 1
    assert set(sizes.unique().tolist()) == ({2, 3} if overlapping else {1, 2})
    assert (start[:, 0] == 0).all() and (end[:, -1] == n_in - 1).all()  # first and last input row covered
    if overlapping:  # neighbours share exactly one row, their boundary a_i
        assert torch.equal(start[:, 1:], end[:, :-1])
    else:  # neighbours tile the rows: no gap, no shared row
        assert torch.equal(start[:, 1:], end[:, :-1] + 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # the generic path and the float64-key path
@pytest.mark.parametrize("overlapping", [False, True])
@pytest.mark.parametrize("draw", [random_boundaries, pseudorandom_boundaries])
def test_pooling_equals_the_definition_forward_and_backward(draw, overlapping: bool,  # noqa: ANN001
                                                            dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 11, 9, dtype=dtype, generator=g).requires_grad_(True)
    rows = regions(draw(3, fmp_output_size(11, 1.5, overlapping), fmp_span(11, overlapping), g), overlapping)
    cols = regions(draw(3, fmp_output_size(9, 1.5, overlapping), fmp_span(9, overlapping), g), overlapping)
    ours = max_pool_regions(x, rows, cols)
    ref = brute_force(x, rows, cols)
    torch.testing.assert_close(ours, ref)
    weights = torch.randn_like(ref)
    (grad,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), x)
    torch.testing.assert_close(grad, grad_ref)  # the gradient goes to the maximum of every region


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("overlapping", [False, True])
def test_fast_path_picks_the_generic_paths_cells_also_on_ties(overlapping: bool, dtype: torch.dtype,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 and bfloat16 pool through float64 keys (value and position in one number, images in chunks), float64
    through a 3 x 3 argmax: on values >= 0 with many ties both pick the first maximal cell in row-major order."""
    monkeypatch.setattr(fractional_pooling, "_CHUNK_CELLS", 3 * 2 * 13 * 11)  # chunks of 3, 3 and 1 images
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 4, (7, 2, 13, 11), generator=g).to(dtype)
    rows = regions(random_boundaries(7, fmp_output_size(13, 1.4, overlapping), fmp_span(13, overlapping), g),
                   overlapping)
    cols = regions(pseudorandom_boundaries(7, fmp_output_size(11, 1.4, overlapping), fmp_span(11, overlapping), g),
                   overlapping)
    fast = region_argmax(x, rows, cols)
    assert torch.equal(fast, region_argmax(x.double(), rows, cols))
    assert torch.equal(max_pool_regions(x, rows, cols), brute_force(x, rows, cols))
    top_left = rows[0][:, None, :, None] * 11 + cols[0][:, None, None, :]  # all equal: the region's first cell
    assert torch.equal(region_argmax(torch.zeros_like(x), rows, cols), top_left.expand_as(fast))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_infinities_and_nan_pool_as_the_definition(dtype: torch.dtype) -> None:
    """-inf loses to every number and +inf wins, and a NaN in a region makes its maximum NaN, as torch's pooling
    does (the float64 keys hold them as finite numbers beyond float32's range)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 11, 9, dtype=dtype, generator=g)
    x[0, 0, :5] = -math.inf
    x[0, 1, 4, 4] = math.inf
    x[1, 0] = -math.inf
    x[1, 2, 6, 2] = math.nan
    rows = regions(pseudorandom_boundaries(2, 7, 10, g), overlapping=True)
    cols = regions(pseudorandom_boundaries(2, 6, 8, g), overlapping=True)
    ours = max_pool_regions(x, rows, cols)
    torch.testing.assert_close(ours, brute_force(x, rows, cols), equal_nan=True)
    assert ours.isnan().sum() > 0 and ours.isposinf().sum() > 0 and ours[1, 0].isneginf().all()


def test_regions_of_mixed_widths_are_refused() -> None:
    x = torch.randn(1, 1, 5, 5)
    good = (torch.tensor([[0, 2]]), torch.tensor([[2, 4]]))
    for bad in [(torch.tensor([[0, 1]]), torch.tensor([[0, 3]])), (torch.tensor([[0, 1]]), torch.tensor([[3, 4]]))]:
        for dtype in (torch.float32, torch.float64):
            with pytest.raises(ValueError, match="cells wide"):
                region_argmax(x.to(dtype), bad, good)


# ---------------------------------------------------------------------------------------------------- sequences
@pytest.mark.parametrize("n_in, n_out", [(25, 17), (35, 25), (7, 4), (10, 9)])
def test_sequences_have_increments_one_and_two_and_the_right_length(n_in: int, n_out: int) -> None:
    g = torch.Generator().manual_seed(3)
    for a in (random_boundaries(40, n_out, n_in, g), pseudorandom_boundaries(40, n_out, n_in, g)):
        assert a.shape == (40, n_out + 1) and (a[:, 0] == 0).all() and (a[:, -1] == n_in).all()
        assert set(a.diff(dim=1).unique().tolist()) <= {1, 2}
    twos = random_boundaries(40, n_out, n_in, g).diff(dim=1).eq(2).sum(1)
    assert (twos == n_in - n_out).all()  # the right mix of ones and twos, in a different order per row
    assert len({tuple(row) for row in random_boundaries(40, n_out, n_in, g).tolist()}) > 1  # shuffled per row


def test_pseudorandom_is_the_paper_formula() -> None:
    u = torch.tensor([0.1, 0.5, 0.93], dtype=torch.float64)
    a = pseudorandom_boundaries(3, 17, 24, u=u)
    alpha = 24 / 17
    expected = [[math.ceil(alpha * (i + v)) - math.ceil(alpha * v) for i in range(18)] for v in u.tolist()]
    assert a.tolist() == expected  # a_i = ceil(alpha (i + u)), shifted to a_0 = 0


# ---------------------------------------------------------------------------------------------- torch's layer
@pytest.mark.parametrize("ties", [False, True])
def test_agrees_with_torch_fractional_max_pool_given_its_samples(ties: bool) -> None:
    """torch.nn.FractionalMaxPool2d pools fixed k x k windows at pseudorandom starts (one sample pair per image and
    channel): given the windows its samples define, our pooling gives its output and gradient exactly (with ties
    among values >= 0 too: both take the first maximal cell in row-major order)."""
    x = torch.randint(0, 3, (2, 3, 25, 23)).float() if ties else torch.randn(2, 3, 25, 23)
    x.requires_grad_(True)
    samples = torch.rand(2, 3, 2)  # [..., 0] -> columns, [..., 1] -> rows (aten's kernel)
    ref = F.fractional_max_pool2d(x, 2, output_size=(17, 16), _random_samples=samples)
    ours = torch.cat([max_pool_regions(x[:, c:c + 1], torch_windows(samples[:, c, 1], 25, 17, 2),
                                       torch_windows(samples[:, c, 0], 23, 16, 2)) for c in range(3)], dim=1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    weights = torch.randn_like(ref)
    grads = [torch.autograd.grad((y * weights).sum(), x)[0] for y in (ours, ref)]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    starts = torch_windows(samples[..., 1].flatten(), 25, 17, 2)[0]
    assert set(starts.diff(dim=1).unique().tolist()) <= {1, 2}  # torch's starts: a pseudorandom 1/2 sequence


def test_paper_overlapping_regions_differ_from_torch_windows_where_the_increment_is_two() -> None:
    """Why ours cannot equal torch's layer output-for-output: with k = 2 its window at a_{i-1} is
    [a_{i-1}, a_{i-1} + 1]; the paper's overlapping region [a_{i-1}, a_i] is one row wider after an increment 2."""
    start, end = regions(KNOWN, overlapping=True)
    window_end = start + 1
    assert ((end == window_end) == (KNOWN.diff(dim=1) == 1)).all()


# ------------------------------------------------------------------------------------------- fresh / fixed / N
def test_fresh_sequences_in_training_and_fixed_ones_at_eval() -> None:
    pool = FractionalMaxPool(math.sqrt(2), "random", overlapping=True, seed=4)
    x = torch.randn(8, 2, 24, 24)
    first, second = pool.train()(x), pool(x)
    assert first.shape == (8, 2, 17, 17) and not torch.equal(first, second)  # a fresh draw every forward
    same_image = pool(x[:1].expand(8, -1, -1, -1))
    assert not all(torch.equal(same_image[0], same_image[i]) for i in range(1, 8))  # and per image
    pool.eval()
    fixed = pool(x)
    assert torch.equal(fixed, pool(x)) and torch.equal(fixed[:3], pool(x[:3]))  # same sequences, any batch
    pool.eval_pass = 1
    assert not torch.equal(fixed, pool(x))  # another member of the seeded family


def test_test_time_averaging_is_the_mean_softmax_of_n_passes() -> None:
    torch.manual_seed(0)
    net = FMPNet(in_channels=1, num_classes=10, input_size=12, filters_step=4, kind="random").eval()
    x = torch.randn(5, 1, 12, 12)
    by_hand = []
    for k in range(3):
        for pool in net.fmp_layers():
            pool.eval_pass = k
        by_hand.append(F.softmax(net(x), dim=1))
    for pool in net.fmp_layers():
        pool.eval_pass = 0
    with net.averaging(3):
        averaged = net(x)
    torch.testing.assert_close(averaged.exp(), torch.stack(by_hand).mean(0))
    assert not torch.allclose(by_hand[0], by_hand[1])  # the passes use different sequences
    assert net.passes == 1 and all(pool.eval_pass == 0 for pool in net.fmp_layers())


# ------------------------------------------------------------------------------------------------ the network
@pytest.mark.parametrize("shape, padded", [((1, 28, 28), 30), ((3, 32, 32), 32)])
def test_network_sizes_for_mnist_and_cifar(shape: tuple[int, int, int], padded: int) -> None:
    net = FMPNet(in_channels=shape[0], num_classes=10, input_size=shape[1], filters_step=4)
    seen: list[tuple[int, ...]] = []
    for pool in net.fmp_layers():
        pool.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[2:])))
    head_c2: list[tuple[int, ...]] = []
    net.head[0].register_forward_hook(lambda _m, _i, out: head_c2.append(tuple(out.shape[2:])))
    out = net(torch.randn(2, *shape))
    assert out.shape == (2, 10) and net.layers == 6 and net.input_size == padded
    assert seen[-1] == (2, 2) and head_c2 == [(1, 1)]  # last FMP 2x2, then C2 -> 1x1 (the paper's "- C2 - C1")
    assert [c.out_channels for c in net.modules() if isinstance(c, torch.nn.Conv2d)][:7] == [4 * n for n in range(1, 8)]
    paper = FMPNet(in_channels=1, num_classes=10, input_size=28, filters_step=4, pad_to=36)
    assert paper.input_size == 36  # the paper's MNIST net: 36 -> 25 -> 17 -> 11 -> 7 -> 4 -> 2


def test_dropout_rises_linearly_with_depth() -> None:
    net = FMPNet(in_channels=1, num_classes=10, input_size=28, filters_step=2, dropout_max=0.6)
    rates = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates == pytest.approx([0.6 * ell / 6 for ell in range(1, 7)])  # p_l = 0.6 (l - 1) / L, l = 2..L+1


def test_registered_trainable_validates_and_offers_the_model_builder() -> None:
    spec = registry.get("fmp_net")
    assert spec.tools["model"] is build and spec.primary == "val_error"
    assert spec.mode("test_error_avg12") == "min"
    for overrides, message in [({"fmp_alpha": 2.0}, "fmp_alpha"), ({"fmp_kind": "fixed"}, "fmp_kind"),
                               ({"fmp_overlap": "both"}, "fmp_overlap"), ({"test_passes": 5}, "test_passes"),
                               ({"dropout_max": 1.0}, "dropout_max"), ({"fmp_layers": 1.5}, "fmp_layers")]:
        with pytest.raises(registry.ConfigError, match=message):
            spec.resolve(overrides)


def test_fmp_net_learns_in_a_bounded_budget(tmp_path) -> None:  # noqa: ANN001
    """sklearn digits (8x8, padded to 9x9, 3 C2-FMP layers): chance is 90% error; a few epochs get far below it,
    with N = 1 (fixed sequences) and N = 4 (averaged) scored on the same weights."""
    from trainables.context import LocalContext

    torch.set_num_threads(1)
    spec = registry.get("fmp_net")
    config = spec.resolve({"dataset": "digits", "epochs": 4, "batch_size": 32, "fmp_filters_step": 16,
                           "test_passes": 4, "fmp_kind": "random"})
    ctx = LocalContext(checkpoint_root=str(tmp_path))
    spec.train(config, ctx)
    last = ctx.results[-1]
    print({key: round(value, 3) for key, value in last.items() if "error" in key})
    assert last["val_error"] < 0.3 and last["val_error_avg4"] < 0.3, last
    assert ctx.results[0]["train_loss"] > last["train_loss"]
