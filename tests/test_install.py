"""`pip install nnsanity` without extras: the checks, the plugin and the training monitor need
only torch and numpy."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A fresh interpreter in which the extras' packages cannot be imported, as after a plain
# `pip install nnsanity`: every public check runs on a small model.
SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, warnings

    BLOCKED = {
        "scipy", "torchvision", "matplotlib", "transformers", "timm", "lightning",
        "pytorch_lightning", "accelerate",
    }

    class NoExtras(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: no extras)")

    sys.meta_path.insert(0, NoExtras())

    import torch
    import torch.nn.functional as F
    import nnsanity, nnsanity.catalogue, nnsanity.plugin

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    batch = (torch.randn(6, 8), torch.randint(0, 3, (6,)))
    loss = F.cross_entropy
    # a token tagger over right-padded ids (pad id 0): the padding checks need padding
    tagger = torch.nn.Sequential(torch.nn.Embedding(9, 8, padding_idx=0), torch.nn.Linear(8, 3))
    ids = torch.randint(1, 9, (4, 6))
    ids[1:, 4:] = 0
    tags = (ids, torch.randint(0, 3, (4, 6)).masked_fill(ids == 0, 0))

    class Recurrent(torch.nn.Module):  # reads its tokens in order
        def __init__(self):
            super().__init__()
            self.embed, self.rnn = torch.nn.Embedding(9, 8), torch.nn.GRU(8, 8, batch_first=True)

        def forward(self, ids):
            return self.rnn(self.embed(ids))[0]

    def signal(n):  # a learnable relation, shared by two batches
        x = torch.randn(n, 8)
        return x, x[:, :3].argmax(1)

    calls = {
        "assert_init_loss": lambda: nnsanity.assert_init_loss(model, batch, loss),
        "assert_loss_decreases": lambda: nnsanity.assert_loss_decreases(model, batch, loss),
        "assert_can_overfit": lambda: nnsanity.assert_can_overfit(model, batch, loss),
        "assert_params_update": lambda: nnsanity.assert_params_update(model, batch, loss),
        "assert_gradient_ratio": lambda: nnsanity.assert_gradient_ratio(model, batch, loss),
        "assert_finite": lambda: nnsanity.assert_finite(model, batch, loss),
        "assert_uses_inputs": lambda: nnsanity.assert_uses_inputs(model, batch, loss, steps=50),
        "assert_batch_independence": lambda: nnsanity.assert_batch_independence(model, batch),
        "assert_causal": lambda: nnsanity.assert_causal(
            torch.nn.Linear(4, 4), torch.randn(2, 5, 4)
        ),
        "assert_no_target_leak": lambda: nnsanity.assert_no_target_leak(
            tagger, tags, lambda z, y: F.cross_entropy(z.transpose(1, 2), y)
        ),
        "assert_uses_order": lambda: nnsanity.assert_uses_order(Recurrent(), ids),
        "assert_reproducible": lambda: nnsanity.assert_reproducible(lambda: torch.randn(3)),
        "assert_eval_mode": lambda: nnsanity.assert_eval_mode(model, batch),
        "assert_params_registered": lambda: nnsanity.assert_params_registered(model, batch, loss),
        "assert_ignores_padding": lambda: nnsanity.assert_ignores_padding(tagger, tags),
        "assert_loss_masks_padding": lambda: nnsanity.assert_loss_masks_padding(
            tagger, tags, lambda z, y: F.cross_entropy(z.transpose(1, 2), y, ignore_index=0)
        ),
        "assert_update_ratio": lambda: nnsanity.assert_update_ratio(model, batch, loss),
        "assert_activation_growth": lambda: nnsanity.assert_activation_growth(model, batch),
        "assert_no_dying_units": lambda: nnsanity.assert_no_dying_units(model, batch, loss),
        "assert_loss_stable": lambda: nnsanity.assert_loss_stable(model, batch, loss),
        "assert_input_scale": lambda: nnsanity.assert_input_scale(model, batch),
        "assert_learns_signal": lambda: nnsanity.assert_learns_signal(
            model, signal(128), loss, holdout=signal(128)
        ),
    }
    missing = {c.assert_name for c in nnsanity.catalogue.CATALOGUE} - set(calls)
    assert not missing, f"add these checks to tests/test_install.py: {missing}"
    for call in calls.values():
        assert call().passed
    nnsanity.layer_gradient_norms(model, batch, loss)

    # the training monitor on a plain loop: healthy, then a learning rate set to 0
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with nnsanity.TrainingMonitor(model, every=5) as monitor:
        for step in range(40):
            if step == 30:
                opt.param_groups[0]["lr"] = 0.0
            opt.zero_grad()
            value = loss(model(batch[0]), batch[1])
            value.backward()
            monitor.observe(value)
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                opt.step()
    kinds = [(a.kind, a.step) for a in monitor.alerts]
    assert kinds[0] == ("no_update", 31), kinds
    assert len(monitor.gradients.history) == 8  # one record per measured step
    blocked = BLOCKED & set(sys.modules)
    assert not blocked, blocked
    print("ok")
    """
)


def test_every_check_runs_without_the_extras_installed():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
