"""Optimizer routing by role: exhaustive, exclusive, logged, resumable."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pgolf_core.config import OptimConfig
from pgolf_core.model.roles import EMBED, HEAD, MATRIX, SCALAR, TABLE, set_role
from pgolf_core.optim import Muon, build_optimizers

CFG = OptimConfig(
    matrix_lr=0.025,
    tied_embed_lr=0.035,
    embed_lr=0.6,
    head_lr=0.008,
    scalar_lr=0.02,
    table_lr=0.0,
    muon_momentum=0.97,
    muon_weight_decay=0.095,
    embed_weight_decay=0.085,
    adam_weight_decay=0.02,
    beta2=0.99,
)


class Toy(nn.Module):
    """Every role once or more, a frozen role-less buffer-like parameter, and a shared (tied) parameter."""

    def __init__(self, tied: bool = True):
        super().__init__()
        self.tok = nn.Embedding(32, 16)
        set_role(self.tok.weight, EMBED)
        self.q = nn.Linear(16, 16, bias=False)
        self.up = nn.Linear(16, 48, bias=False)
        self.down = nn.Linear(48, 16, bias=False)
        for lin in (self.q, self.up, self.down):
            set_role(lin.weight, MATRIX)
        self.gain = set_role(nn.Parameter(torch.ones(16)), SCALAR)
        self.mix = set_role(nn.Parameter(torch.zeros(2, 16)), SCALAR)
        self.bigram = nn.Embedding(64, 16)
        set_role(self.bigram.weight, TABLE)
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)  # no role, not trainable
        self.tied = tied
        if not tied:
            self.head = nn.Linear(16, 32, bias=False)
            set_role(self.head.weight, HEAD)

    def forward(self, idx):
        x = self.tok(idx) + self.bigram(idx * 2 % 64)
        x = x + self.down(torch.relu(self.up(self.q(x) * self.gain)))
        x = x * self.mix[0] + self.mix[1]
        logits = x @ self.tok.weight.T if self.tied else self.head(x)
        return nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())


def _settings(opts):
    return {g["name"]: (type(opt).__name__, g["lr"], g["weight_decay"]) for opt, g in _all_groups(opts)}


def _all_groups(opts):
    return [(opt, g) for opt in opts for g in opt.param_groups]


def test_build_optimizers_routes_every_parameter_to_one_group_with_its_lr_and_wd():
    """Each trainable parameter is in exactly one group; LR/WD come from the role's config fields."""
    model = Toy(tied=False)
    opts = build_optimizers(model, CFG, tie_embeddings=False)
    assert opts.param_names_by_group() == {
        MATRIX: ["q.weight", "up.weight", "down.weight"],
        EMBED: ["tok.weight"],
        HEAD: ["head.weight"],
        TABLE: ["bigram.weight"],
        SCALAR: ["gain", "mix"],
    }
    assert _settings(opts) == {
        MATRIX: ("Muon", 0.025, 0.095),
        EMBED: ("AdamW", 0.6, 0.085),
        HEAD: ("AdamW", 0.008, 0.02),
        TABLE: ("AdamW", 0.6, 0.085),  # table_lr 0: the token-embedding LR
        SCALAR: ("AdamW", 0.02, 0.02),
    }
    routed = [p for _, g in _all_groups(opts) for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(routed) == len({id(p) for p in routed}) == len(trainable) == 8
    muon = opts.optimizers["muon"]
    assert isinstance(muon, Muon)
    (group,) = muon.param_groups
    assert (group["momentum"], group["backend_steps"], group["coefficients"], group["row_norm"]) == (
        0.97,
        5,
        "quintic",
        False,
    )
    (adam_group, *_) = opts.optimizers["adamw"].param_groups
    assert adam_group["betas"] == (0.9, 0.99) and adam_group["eps"] == 1e-8


def test_build_optimizers_tie_embeddings_switches_embed_and_table_lr():
    """tie_embeddings picks tied_embed_lr for the embedding and a table_lr-0 table; table_lr > 0 wins."""
    tied = _settings(build_optimizers(Toy(), CFG, tie_embeddings=True))
    assert tied[EMBED][1] == tied[TABLE][1] == 0.035
    assert HEAD not in tied  # empty groups are absent
    cfg = CFG.model_copy(update={"table_lr": 0.05})
    assert _settings(build_optimizers(Toy(), cfg, tie_embeddings=True))[TABLE][1] == 0.05


def test_build_optimizers_parameter_without_role_raises_naming_it():
    """A trainable parameter with no role is an error that names it (never silently dropped)."""
    model = Toy()
    model.extra = nn.Linear(16, 16)  # neither weight nor bias has a role
    with pytest.raises(ValueError, match=r"\['extra.weight', 'extra.bias'\]"):
        build_optimizers(model, CFG, tie_embeddings=True)


def test_build_optimizers_only_scalars_has_no_muon():
    """A model without matrices gets only AdamW; Muon's group is absent rather than empty."""
    model = nn.Module()
    model.g = set_role(nn.Parameter(torch.ones(4)), SCALAR)
    opts = build_optimizers(model, CFG, tie_embeddings=True)
    assert list(opts.optimizers) == ["adamw"] and opts.param_names_by_group() == {SCALAR: ["g"]}


def test_groups_table_lists_every_group_with_counts():
    """The routing table has one row per group: optimizer, #tensors, #parameters, lr, wd."""
    table = build_optimizers(Toy(tied=False), CFG, tie_embeddings=False).groups_table()
    lines = table.splitlines()
    assert lines[0].split() == ["group", "optimizer", "tensors", "params", "lr", "weight_decay"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows == {
        MATRIX: ["Muon", "3", "1,792", "0.025", "0.095"],
        EMBED: ["AdamW", "1", "512", "0.6", "0.085"],
        HEAD: ["AdamW", "1", "512", "0.008", "0.02"],
        TABLE: ["AdamW", "1", "1,024", "0.6", "0.085"],
        SCALAR: ["AdamW", "2", "48", "0.02", "0.02"],
    }


def test_optimizer_set_lr_multiplier_and_momentum_apply_to_all_groups():
    """lr = base_lr * mult in every group; set_muon_momentum touches only Muon."""
    opts = build_optimizers(Toy(tied=False), CFG, tie_embeddings=False)
    opts.set_lr_multiplier(0.25)
    assert {g["name"]: g["lr"] for _, g in _all_groups(opts)} == {
        MATRIX: 0.025 * 0.25,
        EMBED: 0.6 * 0.25,
        HEAD: 0.008 * 0.25,
        TABLE: 0.6 * 0.25,
        SCALAR: 0.02 * 0.25,
    }
    opts.set_muon_momentum(0.9)
    assert opts.optimizers["muon"].param_groups[0]["momentum"] == 0.9
    assert all("momentum" not in g for g in opts.optimizers["adamw"].param_groups)


def _train(model, opts, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        opts.set_lr_multiplier(1.0 - 0.1 * i)
        opts.zero_grad()
        model(torch.randint(0, 32, (2, 8), generator=gen)).backward()
        opts.step()


def test_optimizer_set_state_dict_round_trip_resumes_bitwise():
    """Saving after 2 steps and resuming into fresh optimizers gives the same parameters after 2 more."""
    torch.manual_seed(0)
    model = Toy(tied=False)
    opts = build_optimizers(model, CFG, tie_embeddings=False)
    _train(model, opts, 2, seed=1)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opts.state_dict())
    _train(model, opts, 2, seed=2)

    resumed = Toy(tied=False)
    resumed.load_state_dict(saved_model)
    resumed_opts = build_optimizers(resumed, CFG, tie_embeddings=False)
    resumed_opts.load_state_dict(saved_opt)
    assert resumed_opts.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.025 * 0.9)
    _train(resumed, resumed_opts, 2, seed=2)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(KeyError, match="adamw"):
        resumed_opts.load_state_dict({"muon": saved_opt["muon"]})


def test_build_optimizers_fused_adamw_steps_on_cpu():
    """fused=True builds a fused AdamW that steps like the unfused one (to fp32 roundoff)."""
    torch.manual_seed(0)
    a, b = Toy(), Toy()
    b.load_state_dict(a.state_dict())
    opts_a = build_optimizers(a, CFG, tie_embeddings=True, fused=False)
    opts_b = build_optimizers(b, CFG, tie_embeddings=True, fused=True)
    assert opts_b.optimizers["adamw"].defaults["fused"] is True
    _train(a, opts_a, 2, seed=3)
    _train(b, opts_b, 2, seed=3)
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
