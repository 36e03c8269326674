"""What the method interface promises the harness and back: teacher options in one place, eager modules
for the methods that copy or differentiate the network (no unwrapping of torch.compile in methods/)."""

from __future__ import annotations

import torch
from torch import nn


def test_every_method_that_needs_a_teacher_names_it_in_its_options():
    from methods import METHODS
    from methods.base import TeacherOptions

    needy = [c for c in METHODS.values() if c.needs_teacher]
    assert needy  # progressive, reflow, consistency distillation, ...
    assert [c.name for c in needy if not issubclass(c.Options, TeacherOptions)] == []


def test_methods_get_the_eager_modules_behind_compiled_views(monkeypatch):
    from bench.config import resolve
    from bench.data import load_dataset
    from bench.models import build_model
    from bench.train.trainer import Trainer
    from methods import get_method

    class View(nn.Module):  # a compiled stand-in without torch's private _orig_mod
        def __init__(self, module):
            super().__init__()
            self.inner = module

        def forward(self, *args):
            return self.inner(*args)

    monkeypatch.setattr(torch, "compile", lambda module, **kw: View(module))
    # schedule = fine: the variant with a target network of its own, the one that copies the network
    cfg = resolve("consistency_training", "smoke", ["train.compile=true", "train.batch_size=32", "model.hidden=16",
                                                    "schedule=fine"])
    data = load_dataset(cfg.data)
    method = get_method(cfg.method_name)(cfg.method, data.num_classes)
    tr = Trainer(cfg, method, build_model(cfg.model, data.shape, data.num_classes), data, torch.device("cpu"), progress=False)
    assert isinstance(tr.fmodel, View) and isinstance(tr.fema, View)
    assert method.eager(tr.fmodel) is tr.model and method.eager(tr.fema) is tr.ema
    assert type(method.target_net(tr.fmodel)) is type(tr.model)  # a copy of the network, not of the wrapper
    tr.train_step()
