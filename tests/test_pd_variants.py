"""CFD and RDD (methods/pd_variants.py): every loss against a hand computation on tiny tensors, zero
when the student's image is the teacher's, gradients that reach the student (and RDD's head) but never
the classifier, the per-pixel FIFO queue, kill-and-resume through the trainer, and the refusals."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bench.files.checkpoint import load, previous
from bench.config import resolve
from bench.data import TensorData
from bench.errors import BenchError
from methods.base import Batch
from methods.pd_variants import (CFDOptions, ClassifierDistillation, PixelQueue, RDDOptions, RelationalDistillation,
                                 dataset_term, feature_kl, memory_relation_kl, pair_relation_kl, pixel_embeddings)


def softmax(xs):
    e = [math.exp(x - max(xs)) for x in xs]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_feature_kl_by_hand():
    h_t = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    h_s = torch.tensor([[0.5, 1.0, 1.0], [2.0, 0.0, 1.0]])
    tau = 0.9
    expected = sum(kl(softmax([v / tau for v in a]), softmax(b)) for a, b in zip(h_t.tolist(), h_s.tolist())) / 2
    assert feature_kl(h_t, h_s, tau).item() == pytest.approx(expected, rel=1e-5)
    assert feature_kl(h_s, h_s, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_dataset_term_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]])
    ps = [softmax(r) for r in logits.tolist()]
    entropy = sum(-sum(p * math.log(p) for p in row) for row in ps) / 2
    pbar = [(a + b) / 2 for a, b in zip(*ps)]
    neg_batch_entropy = sum(p * math.log(p) for p in pbar)
    assert dataset_term(logits, 0.75).item() == pytest.approx(0.75 * entropy + 0.25 * neg_batch_entropy, rel=1e-5)


def test_pixel_embeddings_and_relation_kls_by_hand():
    m = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]], [[[3.0, 1.0]], [[4.0, 1.0]]]])  # (B=2, C=2, H=1, W=2)
    z = pixel_embeddings(m)  # (2, 2 pixels, 2)
    torch.testing.assert_close(z[0, 1], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(z[1, 0], torch.tensor([0.6, 0.8]))
    z_s = pixel_embeddings(m.flip(0) + 0.5)
    zt, zs = z.tolist(), z_s.tolist()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    tau = 0.5
    total = 0.0
    for b in range(2):
        for i in range(2):
            for b2 in range(2):
                p = softmax([dot(zt[b][i], zt[b2][j]) / tau for j in range(2)])
                q = softmax([dot(zs[b][i], zs[b2][j]) / tau for j in range(2)])
                total += kl(p, q)
    assert pair_relation_kl(z, z_s, tau).item() == pytest.approx(total / 8, rel=1e-5)
    anchors = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    flat_t, flat_s = z.reshape(-1, 2), z_s.reshape(-1, 2)
    rows = [kl(softmax([dot(a, c) / 0.1 for c in anchors.tolist()]), softmax([dot(b, c) / 0.1 for c in anchors.tolist()]))
            for a, b in zip(flat_t.tolist(), flat_s.tolist())]
    assert memory_relation_kl(flat_t, flat_s, anchors, 0.1).item() == pytest.approx(sum(rows) / 4, rel=1e-5)
    assert pair_relation_kl(z, z, tau).item() == pytest.approx(0.0, abs=1e-7)
    assert memory_relation_kl(flat_t, flat_t, anchors, 0.1).item() == pytest.approx(0.0, abs=1e-7)


def test_queue_is_fifo():
    q = PixelQueue(5, 2, "cpu")
    rows = torch.arange(16.0).reshape(8, 2)
    q.push(rows[:3])
    torch.testing.assert_close(q.contents(), rows[:3])
    q.push(rows[3:7])  # 7 pushed into 5 places: the two oldest are gone
    torch.testing.assert_close(q.contents(), rows[2:7])
    q.push(rows[7:])
    torch.testing.assert_close(q.contents(), rows[3:8])
    state = q.state_dict()
    q2 = PixelQueue(5, 2, "cpu")
    q2.load_state_dict(state)
    torch.testing.assert_close(q2.contents(), rows[3:8])
    with pytest.raises(BenchError, match="queue has shape"):
        PixelQueue(4, 2, "cpu").load_state_dict(state)


# ----------------------------------------------------------------------------- on digits, tiny


def digits():
    from bench.data import load_digits
    from bench.config import DataConfig

    return load_digits(DataConfig())


class TinyImageNet(nn.Module):
    """f(x, t, d, y) on (B, 1, 8, 8) images: a linear map of the flattened image and t."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(65, 64)

    def forward(self, x, t, d, y):
        return self.lin(torch.cat([x.flatten(1), t[:, None]], 1)).reshape(x.shape)


def make(cls, opts, data, teacher=None):
    """The method set up as a run sets it up: with the classifier it requests, loaded by the harness."""
    from bench.classifiers import classifier_for

    m = cls(opts, num_classes=10, teacher=teacher or TinyImageNet().requires_grad_(False), train_steps=3)
    m.setup(data, torch.device("cpu"), classifier_for(m, data, torch.device("cpu")))
    return m


def stage_batch(data, B=8):
    g = torch.Generator().manual_seed(0)
    x1, y = data.get(torch.randint(len(data), (B,), generator=g))
    return Batch(x1=x1, x0=torch.randn(x1.shape, generator=g), y=y, null_class=10), g


@pytest.mark.parametrize("anchors", ["fixed", "drawn"])
def test_losses_vanish_when_the_student_image_is_the_teachers(anchors):
    """pred = PD's target puts x1_S on x1_T: the feature KL (tau = 1) and both relational KLs (head = identity) are 0."""
    data = digits()
    opts = RDDOptions(M=2, final_steps=1, loss_stages="1", feature_temperature=1.0, beta=0.0, queue_size=64, queue_update=16, num_anchors=32,
                      anchors=anchors)
    m = make(RelationalDistillation, opts, data)
    m.head = nn.Identity()
    batch, g = stage_batch(data)
    for step in range(2):  # drawn: the second step has a memory to relate to; fixed: the queue starts full
        tg = m.targets(None, None, batch, 0, g)
        losses = m.extra_loss(tg.target.clone(), tg, batch, 0, g)
        assert set(losses) == {"feature_kl", "pair_kl"} | ({"memory_kl"} if step or anchors == "fixed" else set())
        for v in losses.values():
            assert abs(v.item()) < 1e-6
    assert m.queue.count == (64 if anchors == "fixed" else 32)


def test_weights_and_stages():
    data = digits()
    m = make(ClassifierDistillation, CFDOptions(M=8, final_steps=1, loss_stages="4", lambda_pd=0.25), data)
    batch, g = stage_batch(data)
    m.train_steps = 3  # stage of step s = s + 1: students of 4, 2, 1 steps
    tg = m.targets(None, None, batch, 0, g)
    torch.testing.assert_close(tg.weight, torch.full((8,), 0.25))
    assert set(m.extra_loss(torch.zeros_like(tg.target), tg, batch, 0, g)) == {"feature_kl", "dataset"}
    tg = m.targets(None, None, batch, 1, g)
    assert tg.weight is None and m.extra_loss(torch.zeros_like(tg.target), tg, batch, 1, g) == {}
    assert m.passes_per_step(96)["classifier_forward_rows"] == 32  # one stage of three
    assert m.run_params(256)["classifier.name"] == "digits-probe"
    for bad in ("3", "8", "x", ""):
        with pytest.raises(BenchError, match="loss_stages"):
            CFDOptions(M=8, final_steps=1, loss_stages=bad).validate()
    assert CFDOptions(M=8, final_steps=1, loss_stages="all").student_steps() == {4, 2, 1}


def linear_cka(a, b) -> float:
    """Linear CKA (Kornblith et al. 2019) of (N, p) and (N, q) features: 1 for features one linear map apart."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def test_the_classifier_is_not_the_fid_network():
    """The features CFD / RDD distil through, against the features digits FID is measured in (the evaluator's
    own extractor, on uint8 images as evaluation feeds it): on all 1,797 digits their linear CKA is far below
    the 1 of one network (or one network up to a linear map), and the weights' hashes differ."""
    from bench.evaluation.metrics import FeatureSpace

    data = digits()
    m = make(ClassifierDistillation, CFDOptions(M=8, final_steps=1), data)
    space = FeatureSpace.resolve("auto", data, "", progress=False)
    u8 = data.to_uint8(data.x)
    with torch.no_grad():
        fid_features = space.create(torch.device("cpu"))(u8)[0]
        h = m.classifier(u8[:, :1].float() / 127.5 - 1.0).h
    assert fid_features.shape[0] == h.shape[0] == 1797
    # a random 64-d linear read-out of the FID features scores 0.97; the probe (0.81 when written) must stay below 0.95
    assert linear_cka(fid_features, fid_features @ torch.randn(128, 64, generator=torch.Generator().manual_seed(0))) > 0.95
    assert linear_cka(h, fid_features) < 0.95
    assert m.run_params(256)["classifier.sha256"] != space.weights_sha256


def test_fixed_anchors_as_released():
    """cantbebetter2/RDD losses/losses.py Memory_p2p_loss: sampled_indices = round(linspace(0, size - 1,
    contrast_size)) (lines 106-108), queue = normalize(randn(size, dim)) (102-103), enqueue before the
    anchors are read (166, 169)."""
    import numpy as np

    from methods.pd_variants import fixed_anchor_slots

    # their lines 106-108 re-typed, at their default sizes (pixel_memory_size 20000, pixel_contrast_size 4096)
    float_indices = torch.linspace(0, 20000 - 1, 4096)
    released = torch.round(float_indices).long().tolist()
    assert fixed_anchor_slots(20000, 4096).tolist() == released
    assert released[0] == 0 and released[-1] == 19999 and len(set(released)) == 4096
    # the same in exact arithmetic: float32 rounds one of 4,096 (3781 * 19999 / 4095 = 18465.4991) up
    exact = np.round(np.arange(4096) * 19999 / 4095).astype(np.int64)
    assert [i for i in range(4096) if exact[i] != released[i]] == [3781] and released[3781] == 18466

    data = digits()
    opts = RDDOptions(M=2, final_steps=1, loss_stages="1", queue_size=50, queue_update=16, num_anchors=5, memory_weight=0.5,
                      memory_temperature=0.2)
    m = make(RelationalDistillation, opts, data)
    assert m.queue.count == 50 and torch.allclose(m.queue.data.norm(dim=1), torch.ones(50))  # full of random unit vectors
    slots = [0, 12, 24, 37, 49]  # round(linspace(0, 49, 5)) = round(0, 12.25, 24.5, 36.75, 49): 24.5 -> 24 (half to even)
    assert fixed_anchor_slots(50, 5).tolist() == slots
    batch, g = stage_batch(data, B=4)
    for step in range(3):  # 16 pixels a step into slots 0-15, 16-31, 32-47
        tg = m.targets(None, None, batch, 0, g)
        pred = torch.zeros_like(tg.target)
        losses = m.extra_loss(pred, tg, batch, 0, g)
        after = m.queue.data.clone()  # this step's pixels are in already
        assert m.queue.ptr == 16 * (step + 1)
        with torch.no_grad():
            out_t, out_s = m.classify(pred, tg)
            z_t = pixel_embeddings(out_t.m).reshape(-1, after.shape[1])
            q_s = pixel_embeddings(m.head(out_s.m)).reshape(-1, after.shape[1])
        want = 0.5 * memory_relation_kl(z_t, q_s, after[slots], 0.2)
        torch.testing.assert_close(losses["memory_kl"].detach(), want)
    assert RDDOptions().deviations() == {} and RDDOptions(anchors="drawn").deviations() == {"anchors": "drawn"}
    with pytest.raises(BenchError, match="anchors must be fixed or drawn"):
        RDDOptions(anchors="random").validate()
    with pytest.raises(BenchError, match="must not exceed queue_size"):
        RDDOptions(queue_size=100, num_anchors=200, queue_update=10).validate()


def test_final_steps_stops_the_stages_at_a_k_step_student():
    """M = 32, final_steps = 4: the PD paper halves the step count per stage, 32 -> 16 -> 8 -> 4, so three
    stages (written out here), each a third of the steps; CFD's classifier stage "4" is the last one."""
    data = digits()
    m = make(ClassifierDistillation, CFDOptions(M=32, final_steps=4, loss_stages="4", student_d="step"), data)  # d says the step
    m.train_steps = 30
    students = {}  # stage -> the student's step size 2d
    batch, g = stage_batch(data)
    for step in range(30):
        tg = m.targets(None, None, batch, step, g)
        students.setdefault(m.stage(step), set()).update(tg.d.tolist())
        assert torch.allclose(tg.t / tg.d, (tg.t / tg.d).round())  # t on the student's grid
    assert students == {1: {1 / 16}, 2: {1 / 8}, 3: {1 / 4}}
    assert [m.stage(s) for s in range(30)] == [1] * 10 + [2] * 10 + [3] * 10
    assert [m.uses_classifier(i) for i in (1, 2, 3)] == [False, False, True] and m.classifier_share() == 1 / 3
    assert m.lr_span(25, 30) == (0, 30)  # one schedule for the plain PD stages; the classifier stage's is its own
    assert [m.stage_optimiser(s, 30) is None for s in (0, 19, 20)] == [True, True, False]
    for bad, match in ((dict(final_steps=3), "final_steps"), (dict(final_steps=32), "final_steps"),
                       (dict(final_steps=4, loss_stages="2"), "loss_stages")):
        with pytest.raises(BenchError, match=match):
            CFDOptions(M=32, **bad).validate()
    assert CFDOptions(M=32, final_steps=4, loss_stages="all").student_steps() == {16, 8, 4}


@pytest.mark.parametrize("cls,opts", [(ClassifierDistillation, CFDOptions(M=2, final_steps=1, loss_stages="1")),
                                      (RelationalDistillation, RDDOptions(M=2, final_steps=1, loss_stages="1", queue_size=64,
                                                                          queue_update=16, num_anchors=32))])
def test_gradients_reach_the_student_and_never_the_classifier(cls, opts):
    """lambda_pd = 0: the MSE weighs nothing, so every gradient comes through the classifier."""
    data = digits()
    m = make(cls, opts, data)
    student = TinyImageNet()
    clf_before = copy.deepcopy(m.classifier.state_dict())
    batch, g = stage_batch(data, B=16)
    for _ in range(2):
        tg = m.targets(None, None, batch, 0, g)
        pred = student(tg.x_t, tg.t, tg.d, tg.y)
        losses = m.extra_loss(pred, tg, batch, 0, g)
        mse = ((pred - tg.target) ** 2).flatten(1).mean(1) * tg.weight
        student.zero_grad()
        (mse.mean() + sum(losses.values())).backward()
        assert student.lin.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in m.classifier.parameters())
    assert not m.classifier.training
    assert all(torch.equal(v, clf_before[k]) for k, v in m.classifier.state_dict().items())
    if cls is RelationalDistillation:
        assert "memory_kl" in losses and all(p.grad is not None for p in m.head.parameters())


def test_queue_holds_whole_teacher_pixel_embeddings():
    data = digits()
    m = make(RelationalDistillation, RDDOptions(M=2, final_steps=1, loss_stages="1", queue_size=40, queue_update=24, num_anchors=8), data)
    batch, g = stage_batch(data, B=4)
    tg = m.targets(None, None, batch, 0, g)
    m.extra_loss(torch.zeros_like(tg.target), tg, batch, 0, g)
    with torch.no_grad():
        x1_t = tg.x_t + (1 - tg.t).reshape(-1, 1, 1, 1) * tg.target
        z = pixel_embeddings(m.classifier(x1_t).m).reshape(-1, m.queue.data.shape[1])  # (4 * 16 pixels, C)
    assert m.queue.ptr == 24
    stored = m.queue.data[:24]  # the slots this step wrote; the rest still hold the initial random unit vectors
    torch.testing.assert_close(m.queue.data[24:].norm(dim=1), torch.ones(16))
    dist = (stored[:, None] - z[None]).norm(dim=-1)
    assert torch.all(dist.min(1).values < 1e-5)  # every entry is one pixel's embedding
    assert len(set(dist.argmin(1).tolist())) == 24  # 24 distinct pixels


def rdd_trainer(cfg, teacher, ckpt_path=None):
    from bench.train.run import prepare
    from bench.train.trainer import Trainer

    p = prepare(cfg, progress=False)
    p.method.teacher = teacher
    p.model.load_state_dict(teacher.state_dict())
    return Trainer(cfg, p.method, p.model, p.data, p.device, checkpoint_path=ckpt_path, progress=False)


def test_rdd_head_and_queue_survive_kill_and_resume(tmp_path):
    """6 steps straight against 3 steps, a checkpoint, a fresh process's trainer and 3 more: equal weights,
    head (BN statistics included), optimiser and queue."""
    from bench.models import build_model

    over = ["train.steps=6", "train.batch_size=16", "model.hidden=32", "model.depth=2", "method.M=4", "final_steps=1", "loss_stages=all",
            "queue_size=100", "queue_update=40", "num_anchors=64", "train.checkpoint_every=3", "train.log_every=3"]
    cfg = resolve("rdd", "digits", over)
    torch.manual_seed(5)
    teacher = build_model(cfg.model, (1, 8, 8), 10).requires_grad_(False).eval()
    straight = rdd_trainer(cfg, teacher, tmp_path / "a" / "last.pt")
    straight.fit()
    assert straight.method.queue.count == 100 and straight.method.queue.ptr == (6 * 40) % 100
    assert len(straight.opt.param_groups) == 2  # the head trains beside the model

    resumed = rdd_trainer(cfg, teacher)
    resumed.load_state_dict(load(previous(tmp_path / "a" / "last.pt")))  # the step-3 checkpoint
    assert resumed.step == 3
    resumed.fit()
    for a, b in ((straight.model, resumed.model), (straight.method.head, resumed.method.head)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.testing.assert_close(straight.method.queue.contents(), resumed.method.queue.contents(), rtol=0, atol=0)
    head = straight.method.head.state_dict()  # used at every step: fixed anchors, the queue starts full
    assert head["1.num_batches_tracked"] == 6 and not torch.equal(head["0.weight"], load(
        previous(tmp_path / "a" / "last.pt"))["method"]["head"]["0.weight"])


def test_gradient_clipping_covers_the_rdd_head(monkeypatch):
    """train.grad_clip bounds one norm over the model and the head the optimiser steps beside it."""
    from bench.models import build_model

    over = ["train.steps=2", "train.batch_size=8", "model.hidden=32", "model.depth=2", "method.M=2", "final_steps=1", "loss_stages=all",
            "queue_size=64", "queue_update=16", "num_anchors=16", "train.grad_clip=1e-3", "stage_optimiser=profile"]
    cfg = resolve("rdd", "digits", over)
    torch.manual_seed(5)
    teacher = build_model(cfg.model, (1, 8, 8), 10).requires_grad_(False).eval()
    tr = rdd_trainer(cfg, teacher)
    norms, step = [], tr.opt.step

    def record(*a, **k):
        grads = [p.grad for g in tr.opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append((torch.stack([g.norm() for g in grads]).norm().item(),
                      any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.method.head.parameters())))
        return step(*a, **k)

    tr.opt.step = record
    tr.fit()
    assert norms[-1][1]  # the head has gradients at step 2 (the queue holds step 1's pixels)
    assert all(n <= 1e-3 * (1 + 1e-4) for n, _ in norms)


def test_refusals_in_one_sentence(monkeypatch, tmp_path):
    from bench.classifiers import load_classifier_for
    from bench.data.latents import LatentDataset
    from bench.train.run import execute

    for name in ("cfd", "rdd"):
        with pytest.raises(BenchError, match="holds points, not images"):
            execute(resolve(name, "smoke", ["train.steps=2"]), "t", progress=False, echo=lambda *a: None)
    from bench.store.tracking import store_root

    assert not (store_root() / "mlflow.db").exists()  # refused before anything was written
    latents = LatentDataset.__new__(LatentDataset)
    latents.name, latents.shape = "latents:/x", (4, 32, 32)
    with pytest.raises(BenchError, match="decode through the VAE"):
        load_classifier_for(latents, "auto", "", torch.device("cpu"), "cfd")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("BENCH_CLASSIFIER_WEIGHTS", raising=False)
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    images = TensorData("npz:/x.npz", "images", torch.zeros(4, 3, 8, 8), None, 0)
    with pytest.raises(BenchError, match="ResNet-18 weights resnet18-f37072fd.pth; BENCH_OFFLINE forbids"):
        load_classifier_for(images, "auto", "", torch.device("cpu"), "cfd")
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()
    with pytest.raises(BenchError, match="/no/such.pth do not exist"):
        load_classifier_for(images, "resnet18", "/no/such.pth", torch.device("cpu"), "cfd")
    with pytest.raises(BenchError, match="classifies 1x8x8 digits"):
        load_classifier_for(images, "digits-probe", "", torch.device("cpu"), "cfd")


def test_the_classifier_is_handed_to_the_method():
    """A method never loads files: it names the classifier it distils through, the harness loads it for the
    data (the dataset's own where method.classifier = auto) and hands it to setup()."""
    from bench.classifiers import classifier_for
    from methods.flow_matching import FlowMatching

    data = digits()
    m = ClassifierDistillation(CFDOptions(M=8, final_steps=1), num_classes=10, teacher=TinyImageNet(), train_steps=3)
    assert m.classifier_request() == ("auto", "")
    with pytest.raises(BenchError, match="cfd distils through a frozen classifier and setup\\(\\) was handed none"):
        m.setup(data, torch.device("cpu"))
    given = classifier_for(m, data, torch.device("cpu"))
    assert given.name == "digits-probe"  # what digits declares (Dataset.classifier)
    m.setup(data, torch.device("cpu"), given)
    assert m.classifier is given
    m.setup(data, torch.device("cpu"))  # the trainer's second call changes nothing
    assert m.classifier is given
    fm = FlowMatching(resolve("flow_matching", "smoke", []).method, 0)
    assert fm.classifier_request() is None and classifier_for(fm, data, torch.device("cpu")) is None


def test_methods_import_nothing_from_bench_but_its_errors():
    """methods/ holds the methods alone: files, classifiers and data come through the interface."""
    import ast
    from pathlib import Path

    imported = set()
    for path in sorted((Path(__file__).resolve().parent.parent / "methods").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    assert {m for m in imported if m == "bench" or m.startswith("bench.")} == {"bench.errors"}


def test_resnet18_from_a_local_file(tmp_path, monkeypatch):
    import torchvision

    from bench.files.checkpoint import file_sha256
    from bench.classifiers import load_classifier_for

    path = tmp_path / "resnet18-f37072fd.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    monkeypatch.setenv("BENCH_CLASSIFIER_WEIGHTS", str(path))
    images = TensorData("npz:/x.npz", "images", torch.zeros(4, 3, 16, 16), None, 0)
    clf = load_classifier_for(images, "auto", "", torch.device("cpu"), "cfd")
    assert clf.name == "resnet18" and clf.sha256 == file_sha256(path)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = clf(x)
    assert out.logits.shape == (2, 1000) and out.h.shape == (2, 512) and out.m.shape == (2, 512, 7, 7)  # resized to 224: a 7x7 map, not 1x1
    out.h.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in clf.parameters())


def test_resnet18_downloaded_like_the_inception_file(tmp_path, monkeypatch):
    """No local file and online: fetched into torch hub's cache from $BENCH_CLASSIFIER_URL (a server on
    127.0.0.1), kept only when its SHA-256 starts with the expected prefix (torch hub's check)."""
    import hashlib

    from bench import classifiers
    from tests.test_inception_download import _Server

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("BENCH_CLASSIFIER_WEIGHTS", raising=False)
    monkeypatch.delenv("BENCH_OFFLINE", raising=False)
    body = b"not really resnet weights" * 100
    cache = tmp_path / "torch" / "hub" / "checkpoints" / classifiers.RESNET18_FILE
    with _Server(body) as server:
        monkeypatch.setenv("BENCH_CLASSIFIER_URL", server.url)
        with pytest.raises(BenchError, match="it was deleted"):  # the real prefix: this body does not match it
            classifiers.find_resnet18_weights("", progress=False)
        assert not cache.exists() and not list(cache.parent.glob("*.part"))
        monkeypatch.setattr(classifiers, "RESNET18_SHA256_PREFIX", hashlib.sha256(body).hexdigest()[:8])
        assert classifiers.find_resnet18_weights("", progress=False) == cache
        assert cache.read_bytes() == body and len(server.requests) == 2
        assert classifiers.find_resnet18_weights("", progress=False) == cache  # cached: no third request
        assert len(server.requests) == 2

