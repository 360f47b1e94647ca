"""A whole chain of sessions on the built-in data with the leaf pieces only (the wiring that
``mode=incremental`` needs): base session, memory saved to a run folder, then sessions that
load the memory, grow the head, train with a method's plan, align, update the memory and
report old/new/all metrics, forgetting and the figure."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imbalance.exemplars import ExemplarMemory, extract_features, update_memory
from imbalance.incremental import (
    frozen_copy,
    grow_model_classifier,
    label_positions,
    merge_classes,
    next_session,
    samples_of_classes,
    session_classes,
    validate_new_session,
)
from imbalance.incremental_methods import (
    BoundTeacherLoss,
    TeacherHook,
    build_incremental,
)
from imbalance.incremental_metrics import (
    chain_summary,
    plot_session_accuracy,
    session_record,
)
from imbalance.models import create_model
from imbalance.synthetic import builtin_dataset


def _train(model, x, y, criterion, plan=None, steps=6, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    handles = plan.attach(opt, model) if plan is not None else []
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(y))[:32]
        loss = criterion(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for h in handles:
        h.remove()
    return loss.item()


def _predict(model, x):
    model.eval()
    with torch.no_grad():
        return model(x).argmax(1).numpy()


def test_chain_of_sessions_on_the_builtin_data(tmp_path):
    methods = {1: "wa", 2: "icarl"}  # the method is a per-session choice
    torch.set_num_threads(1)
    data = builtin_dataset(num_classes=5, train_per_class=24, test_per_class=8, length=128, seed=0)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    ytr, yte = ytr + 1, yte + 1  # labels 1..5 (original values, as a MATLAB file would hold)
    plan_classes = session_classes(sorted(np.unique(ytr).tolist()), [3, 1, 1])
    assert plan_classes == [[1, 2, 3], [4], [5]]

    # ---- base session (mode=train with data.synthetic.sessions)
    classes = list(plan_classes[0])
    tr = samples_of_classes(ytr, classes)
    torch.manual_seed(0)
    model = create_model("ConvNetADSB", num_classes=len(classes), width=8, depth=2, dropout_rate=0.0)
    xt = torch.from_numpy(xtr[tr])
    _train(model, xt, torch.from_numpy(label_positions(ytr[tr], classes)), torch.nn.CrossEntropyLoss())
    memory = update_memory(None, xtr[tr], ytr[tr], memory_total=12, features=extract_features(model, xtr[tr]),
                           indices=tr, session=0).compute_class_means(model)
    te = samples_of_classes(yte, classes)
    history = [session_record(session=0, classes=classes, num_old=0, y_true=label_positions(yte[te], classes),
                              y_pred=_predict(model, torch.from_numpy(xte[te])))]
    run = tmp_path / "run0"
    memory.save(run / "memory")
    torch.save(model.state_dict(), run / "model.pt")

    for s in (1, 2):
        method = methods[s]
        # ---- mode=incremental resume=<parent>: everything from the parent's folder
        memory = ExemplarMemory.load(run / "memory")
        old = memory.classes.tolist()
        assert old == classes
        k = next_session(old, plan_classes)
        assert k == s
        new_tr = samples_of_classes(ytr, plan_classes[k])
        info = validate_new_session(old_classes=old, new_labels=ytr[new_tr], old_shape=memory.signals.shape[1:],
                                    new_shape=xtr.shape[1:])
        classes = merge_classes(old, info["new"])
        teacher = frozen_copy(model)
        w_old = model.classifier.weight.detach().clone()
        grow_model_classifier(model, len(info["new"]))
        assert torch.equal(model.classifier.weight[:len(old)], w_old)
        plan = build_incremental(method, num_old=len(old), num_classes=len(classes))
        x_sess = np.concatenate([memory.signals, xtr[new_tr]]) if plan.replay else xtr[new_tr]
        y_sess = np.concatenate([memory.labels, ytr[new_tr]]) if plan.replay else ytr[new_tr]
        hook = TeacherHook(model, teacher)
        _train(model, torch.from_numpy(x_sess), torch.from_numpy(label_positions(y_sess, classes)),
               BoundTeacherLoss(plan.loss, hook), plan=plan, seed=s)
        hook.remove()
        extra = plan.after_training(model)
        if method == "wa":
            assert extra["wa_gamma"] > 0 and (model.classifier.weight >= 0).all()
        memory = update_memory(memory, xtr[new_tr], ytr[new_tr], memory_total=12,
                               features=extract_features(model, xtr[new_tr]), indices=new_tr,
                               session=s).compute_class_means(model)
        assert memory.classes.tolist() == classes
        assert set(memory.counts().values()) == {12 // len(classes)}
        te = samples_of_classes(yte, classes)
        evaluator = model if plan.eval_classifier == "head" else _nme(model, memory)
        pred = _predict(evaluator, torch.from_numpy(xte[te]))
        rec = session_record(session=s, classes=classes, num_old=len(old),
                             y_true=label_positions(yte[te], classes), y_pred=pred, extra=extra)
        assert rec["old"]["n_samples"] == 8 * len(old) and rec["new"]["n_samples"] == 8
        history.append(rec)
        run = tmp_path / f"run{s}"
        memory.save(run / "memory")

    summary = chain_summary(history)
    assert summary["sessions"] == 3 and summary["forgetting"] is not None
    assert set(summary["forgetting_per_class"]) == {"1", "2", "3", "4"}
    assert 0.0 <= summary["average_incremental_acc"] <= 1.0
    paths = plot_session_accuracy(history, tmp_path / "incremental_accuracy")
    assert all(p.is_file() for p in paths)
    with pytest.raises(Exception, match="already learned all 3 sessions"):
        next_session(ExemplarMemory.load(run / "memory").classes.tolist(), plan_classes)


def _nme(model, memory):
    from imbalance.exemplars import NMEModel

    return NMEModel(model, memory.nme_classifier())
