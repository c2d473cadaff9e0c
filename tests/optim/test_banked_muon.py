"""BankedMuon (reduce-scatter, sharded Newton-Schulz, all-gather; PR #399) against plain Muon on one
process fed the averaged gradient, on real 2- and 4-process gloo groups."""

from __future__ import annotations

import pytest
import torch

from pgolf_core.optim.bank_plan import assign, build_banks, ns_flops, shard_plan
from pgolf_core.optim.banked import BankedMuon
from pgolf_core.optim.muon import Muon
from tests.gloo import run_ranks
from tests.optim import _banked_worker as W


@pytest.fixture(autouse=True)
def one_thread():
    """The workers' matmul kernels: CPU results must not depend on how work splits across threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference(world: int, kind: str, clip: bool = False):
    init, grads = W.make_problem(world, kind)
    return W.run(Muon, init, [W.average(step) for step in grads], clip=clip)


def assert_same(got, expected, bitwise: bool, atol: float = 1e-6):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if bitwise:
            assert torch.equal(g, e)
        else:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=atol)


def assert_state(got: dict, expected: dict, bitwise: bool):
    assert sorted(got) == sorted(expected)
    assert_same(
        [got[k]["momentum_buffer"] for k in sorted(got)],
        [expected[k]["momentum_buffer"] for k in sorted(expected)],
        bitwise,
    )


# ----- one process -----
@pytest.mark.parametrize("kind", ["random", "dyadic"])
def test_single_process_equals_muon_bitwise(kind):
    init, grads = W.make_problem(1, kind)
    local = [step[0] for step in grads]
    params, _, state = W.run(BankedMuon, init, local)
    ref_params, _, ref_state = W.run(Muon, init, local)
    assert_same(params, ref_params, bitwise=True)
    assert_state(state, ref_state, bitwise=True)
    # Not a comparison of untouched copies.
    assert all(not torch.equal(p, q) for p, q in zip(params, [p for g in init for p in g]))
    assert len(state) == sum(len(g) for g in W.SHAPES)


def test_state_dict_is_muons_format_both_ways():
    """A BankedMuon checkpoint resumes plain Muon (and the reverse) with bitwise the same result."""
    init, grads = W.make_problem(1, "random")
    local = [step[0] for step in grads]
    ref_params, _, _ = W.run(Muon, init, local)
    for first, second in ((BankedMuon, Muon), (Muon, BankedMuon)):
        groups = [[torch.nn.Parameter(p.clone()) for p in g] for g in init]
        opt = W.make_opt(first, groups)
        for step, gs in enumerate(local):
            if step == 2:
                state = opt.state_dict()
                opt = W.make_opt(second, groups)
                opt.load_state_dict(state)
            for ps, row in zip(groups, gs):
                for p, g in zip(ps, row):
                    p.grad = None if g is None else g.clone()
            opt.step()
        assert_same([p.detach() for g in groups for p in g], ref_params, bitwise=True)


def test_clip_covers_other_params_like_torch():
    """One global norm over the Muon matrices and ``other_params`` (e.g. the AdamW ones), as
    torch.nn.utils.clip_grad_norm_ over all of them; zero_grad drops an unconsumed reduction."""
    init, grads = W.make_problem(1, "random")
    groups = [[torch.nn.Parameter(p.clone()) for p in g] for g in init]
    others = [torch.nn.Parameter(torch.zeros(7)), torch.nn.Parameter(torch.zeros(3, 5))]
    opt = W.make_opt(BankedMuon, groups)
    for gi, ps in enumerate(groups):
        for p, g in zip(ps, grads[0][0][gi]):
            p.grad = g.clone()
    opt.reduce_grads()
    opt.zero_grad()  # the reduction above must not leak into the next step
    assert all(p.grad is None for g in groups for p in g)
    matrices = [p for g in groups for p in g]
    for gi, ps in enumerate(groups):
        for p, g in zip(ps, grads[1][0][gi]):
            p.grad = g.clone()
    for i, o in enumerate(others):
        o.grad = torch.full_like(o, 3.0 + i)
    ref_grads = [p.grad.clone() for p in matrices + others]
    total = opt.clip_grad_norm_(W.CLIP, others)
    ref_total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in ref_grads]))
    torch.testing.assert_close(total, ref_total)
    coef = W.CLIP / (ref_total + 1e-6)
    assert coef < 0.2
    for o, g in zip(others, ref_grads[len(matrices) :]):
        torch.testing.assert_close(o.grad, g * coef)
    opt.step()
    muon = W.make_opt(Muon, [[torch.nn.Parameter(p.clone()) for p in g] for g in init])
    ref = [p for g in muon.param_groups for p in g["params"]]
    for p, g in zip(ref, ref_grads):
        p.grad = g * coef
    muon.step()
    assert_same([p.detach() for p in matrices], [p.detach() for p in ref], bitwise=False)


def test_clip_skips_its_own_params_among_the_others():
    """The trainer passes model.parameters(): the matrices among them count once, from the shards."""
    init, grads = W.make_problem(1, "random")
    other = torch.nn.Parameter(torch.zeros(4))
    totals, clipped = [], []
    for with_own in (False, True):
        groups = [[torch.nn.Parameter(p.clone()) for p in g] for g in init]
        for ps, gs in zip(groups, grads[0][0]):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
        other.grad = torch.full_like(other, 2.0)
        opt = W.make_opt(BankedMuon, groups)
        totals.append(opt.clip_grad_norm_(W.CLIP, [p for g in groups for p in g] * with_own + [other]))
        clipped.append(other.grad.clone())
    assert torch.equal(totals[0], totals[1]) and torch.equal(clipped[0], clipped[1])
    assert clipped[0][0] < 2.0


def test_reload_into_the_same_optimizer_like_warmup():
    """The trainer's compile warmup: state_dict() first, some steps, load_state_dict() back into the
    same optimizer: what follows equals a run without the warmup steps."""
    init, grads = W.make_problem(1, "random")
    local = [step[0] for step in grads]
    ref_params, _, _ = W.run(Muon, init, local[2:])
    groups = [[torch.nn.Parameter(p.clone()) for p in g] for g in init]
    opt = W.make_opt(BankedMuon, groups)
    start = opt.state_dict()
    snapshot = [p.detach().clone() for g in groups for p in g]
    for i, gs in enumerate(local):
        if i == 2:  # end of "warmup": restore weights and optimizer
            with torch.no_grad():
                for p, q in zip([p for g in groups for p in g], snapshot):
                    p.copy_(q)
            opt.load_state_dict(start)
        for ps, row in zip(groups, gs):
            for p, g in zip(ps, row):
                p.grad = None if g is None else g.clone()
        opt.step()
    assert_same([p.detach() for g in groups for p in g], ref_params, bitwise=True)


def test_from_muon_keeps_groups_and_state():
    init, grads = W.make_problem(1, "random")
    groups = [[torch.nn.Parameter(p.clone()) for p in g] for g in init]
    muon = W.make_opt(Muon, groups)
    for gi, ps in enumerate(groups):
        for p, g in zip(ps, grads[0][0][gi]):
            p.grad = g.clone()
    muon.step()
    banked = BankedMuon.from_muon(muon)
    assert [g["lr"] for g in banked.param_groups] == [0.02, 0.03]
    assert [g["nesterov"] for g in banked.param_groups] == [True, False]
    assert isinstance(banked, Muon)  # OptimizerSet.set_muon_momentum finds it
    assert_state(banked.state_dict()["state"], muon.state_dict()["state"], bitwise=True)


def test_banks_share_element_counts_and_balance_padding():
    params = [torch.nn.Parameter(torch.zeros(s)) for s in W.SHAPES[0]]
    banks = build_banks(params)
    assert [(b.numel, b.size) for b in banks] == [(512, 5), (576, 1), (64, 3)]
    assert banks[0].shapes == [(16, 32)] * 3 + [(32, 16)] * 2  # sorted: one NS run per shape
    # NS work per matrix (1 step): 16x32 and 32x16 4*16^2*32 + 2*16^3; 24x24 6*24^3; 8x8 6*8^3.
    f, f24, f8 = 4 * 256 * 32 + 2 * 4096, 6 * 24**3, 6 * 8**3
    assert ns_flops(32, 16, 1) == ns_flops(16, 32, 1) == f and ns_flops(24, 24, 3) == 3 * f24
    # Heaviest bank first; each bank's extra matrices go to the least-loaded ranks so far (ties: lower
    # rank), so the padding does not pile up on the last ranks.
    assert shard_plan([params], 4, 1) == [
        {"numel": 512, "matrices": 5, "padded": 8, "flops": [2 * f, f, f, f]},
        {"numel": 576, "matrices": 1, "padded": 4, "flops": [0, f24, 0, 0]},
        {"numel": 64, "matrices": 3, "padded": 4, "flops": [f8, 0, f8, f8]},
    ]
    assign(banks, 4)
    assert [b.counts for b in banks] == [[2, 1, 1, 1], [0, 1, 0, 0], [1, 0, 1, 1]]
    bank3d = banks[2]  # the 3x8x8 parameter's slices sit on ranks 0, 2, 3: rows 0, 2, 3 of the padded bank
    assert bank3d.slots(bank3d.members[0]).tolist() == [0, 2, 3]
    assert [banks[0].slots(m) for m in banks[0].members] == [slice(j, j + 1) for j in (0, 1, 2, 4, 6)]


# ----- 2 and 4 processes -----
@pytest.fixture(scope="module", params=[2, 4])
def ranks(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"banked{world}")
    run_ranks(W.worker, world, str(out))
    return world, [torch.load(out / f"rank{r}.pt") for r in range(world)]


@pytest.mark.parametrize("kind", ["random", "dyadic"])
def test_ranks_equal_muon_on_averaged_gradient(ranks, kind):
    """Bitwise with 2 ranks (a + b = b + a) and with dyadic gradients (exact sums); else to float
    tolerance (the reduce-scatter sums 4 ranks in its own order)."""
    world, results = ranks
    ref_params, _, ref_state = reference(world, kind)
    bitwise = world == 2 or kind == "dyadic"
    for res in results:
        for case in (kind, kind + "_reload"):
            params, _, state = res[case]
            assert_same(params, ref_params, bitwise)
            assert_state(state, ref_state, bitwise)
            assert_same(params, results[0][kind][0], bitwise=True)  # every rank applies the same bits


@pytest.mark.parametrize("kind", ["random", "dyadic"])
def test_ranks_clip_equals_clipped_muon(ranks, kind):
    world, results = ranks
    ref_params, ref_norms, _ = reference(world, kind, clip=True)
    assert min(ref_norms) > 2 * W.CLIP
    for res in results:
        params, norms, _ = res[kind + "_clip"]
        assert_same(norms, ref_norms, bitwise=False, atol=1e-4)
        assert_same(params, ref_params, bitwise=False, atol=1e-5)
    # Clipping changed the result: the clipped reference differs from the unclipped one.
    assert not torch.allclose(ref_params[0], reference(world, kind)[0][0])


@pytest.mark.parametrize("ranks", [2], indirect=True)
def test_ddp_excluding_muon_params_matches_ddp_plus_muon(ranks):
    """A tiny GPT under DDP: Muon's matrices excluded from DDP and averaged by BankedMuon give Muon's
    result; parameter names and counts, and the model's state-dict keys, are unchanged."""
    world, results = ranks
    assert world == 2  # the worker runs the DDP case on the 2-process group only
    r0, r1 = results
    assert r0["ddp_banked"]["muon_type"] == "BankedMuon" and r0["ddp_muon"]["muon_type"] == "Muon"
    for key in ("names", "state_keys"):
        assert r0["ddp_banked"][key] == r0["ddp_muon"][key]
    matrices = set(r0["ddp_banked"]["muon_names"])
    assert len(matrices) == 6 * W.TINY["num_layers"]  # Q, K, V, O, up, down
    for name in r0["ddp_muon"]["grads"]:
        averaged = torch.equal(r0["ddp_banked"]["grads"][name], r1["ddp_banked"]["grads"][name])
        # Block matrices keep each rank's own gradient (DDP left them alone); the rest is averaged.
        assert averaged == (name not in matrices), name
    # Bitwise: with 2 ranks DDP's average and the reduce-scatter's sum / 2 are the same bits.
    for name, p in r0["ddp_muon"]["params"].items():
        assert torch.equal(r0["ddp_banked"]["params"][name], p), name
        assert torch.equal(r1["ddp_banked"]["params"][name], p), name
    moved = [n for n in matrices if not torch.equal(r0["ddp_muon"]["params"][n], r0["ddp_muon"]["init"][n])]
    assert sorted(moved) == sorted(matrices)
