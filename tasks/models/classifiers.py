"""The classifiers trained on embeddings: the score stage's quality head (`train_head`: good vs other, a logistic
regression fit full-batch by L-BFGS, a few thousand rows) and the proxy classifier (`fit_proxy`: a small MLP or
linear head, minibatches over rows streamed from float16, any number of rows) with its training dynamics and label
noise by confident learning. Two because they answer two questions at two sizes; select, augment's label check and
the selection benchmark all use the proxy from here.

Training dynamics of the proxy classifier:

For labeled data (a `label` column), a small MLP (or a linear head) is trained on the score stage's embeddings for
`epochs` epochs, over `seeds` seeds, each seed cross-fitted over `folds` stratified folds. Per example:

- score_el2n: ||softmax - onehot(label)||_2 at epoch `early_epoch`, on the model training on it (Paul et al., "Deep
  Learning on a Data Diet"), mean over seeds;
- score_grand: the norm of the loss gradient with respect to the last layer at that epoch, ||p - y|| *
  sqrt(||h||^2 + 1) (h: the last hidden layer; exact for the last layer, the usual approximation of GraNd);
- score_forgetting: learned -> forgotten transitions between epochs (Toneva et al.), mean over seeds;
- score_aum: the mean over epochs of the margin (logit of the label minus the largest other logit; Pleiss et al.);
- score_epochs_to_learn: the epoch from which the example stays correctly classified (epochs + 1: never);
- out-of-fold probabilities: from the fold's model that did not train on the example, averaged over seeds. These
  go to cleanlab (confident learning): how many labels are wrong comes from its confident joint
  (`find_label_issues`), which ones from `score_label_quality`, the mean of cleanlab's self-confidence and
  sigmoid(AUM) (the dynamics: a wrong label keeps a negative margin while the model trains; Pleiss et al.).
Cost is linear in rows: per epoch, one pass of minibatch steps and one chunked forward pass for the statistics.
Memory: the embeddings as given (float16 from the score stage) and a few numbers per row; see _Rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.models.batching import index_chunks


@dataclass
class Dynamics:
    el2n: np.ndarray
    grand: np.ndarray
    forgetting: np.ndarray
    aum: np.ndarray
    epochs_to_learn: np.ndarray
    train_prob: np.ndarray  # mean over epochs and seeds of p(label) on the model training on the example
    oof: np.ndarray  # (n, classes) out-of-fold probabilities, mean over seeds


def _folds(y: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified: each class's rows shuffled and dealt round-robin, so every fold sees every class."""
    out = np.empty(y.size, dtype=np.int64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        out[rng.permutation(rows)] = np.arange(rows.size) % folds
    return out


def _model(dim: int, classes: int, hidden: int, seed: int, device):
    import torch

    torch.manual_seed(seed)
    if hidden:
        body = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU())
        head = torch.nn.Linear(hidden, classes)
    else:
        body, head = torch.nn.Identity(), torch.nn.Linear(dim, classes)
    return body.to(device), head.to(device)


class _Rows:
    """The embeddings as they are held (float16, or float32), handed to the model a minibatch or chunk at a time as
    float32 on the device. Never copied whole in float32, nor per fold: on a CPU the training's memory is the
    embeddings as given plus a few numbers per row (1M x 384 in float16: 768 MB). The rows are gathered by torch
    from a zero-copy view (44 us for 256 x 384 float16 -> float32 on 2 cores; numpy's float16 cast took 219 us,
    which made the dynamics 45% slower). On CUDA the float16 matrix is moved to the device once."""

    def __init__(self, emb: np.ndarray, device):
        import warnings

        import torch

        self.device = device
        with warnings.catch_warnings():  # a read-only array (polars' buffer) is only ever read here
            warnings.simplefilter("ignore", UserWarning)
            self.rows = torch.from_numpy(np.ascontiguousarray(emb))
        if getattr(device, "type", "cpu") == "cuda":
            self.rows = self.rows.half().to(device)

    def take(self, rows: np.ndarray):
        import torch

        return self.rows.index_select(0, torch.from_numpy(rows).to(self.device)).float()


def _epoch(body, head, opt, x: _Rows, train: np.ndarray, yt, batch_size: int, gen) -> None:
    """One pass of minibatch steps over the rows `train` (labels `yt`, in the same order), shuffled by `gen`."""
    import torch

    order = torch.randperm(train.size, generator=gen).numpy()
    for i in range(0, train.size, batch_size):
        idx = order[i:i + batch_size]
        loss = torch.nn.functional.cross_entropy(head(body(x.take(train[idx]))),
                                                 yt[torch.from_numpy(idx).to(yt.device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def fit_proxy(emb: np.ndarray, y: np.ndarray, classes: int, cfg, device, seed: int = 0):
    """The proxy classifier trained on every row for `cfg.epochs` epochs, as the dynamics train it; returns a
    function of embeddings -> class probabilities (n, classes). What the selection benchmark trains on each subset
    and the augment gate's label check asks."""
    import torch

    x = _Rows(emb, device)
    body, head = _model(emb.shape[1], classes, cfg.hidden, seed, device)
    opt = torch.optim.AdamW([*body.parameters(), *head.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows = np.arange(emb.shape[0])
    yt = torch.from_numpy(y.astype(np.int64)).to(device)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        _epoch(body, head, opt, x, rows, yt, cfg.batch_size, gen)

    def probabilities(test: np.ndarray) -> np.ndarray:
        if test.shape[0] == 0:
            return np.zeros((0, classes))
        held = _Rows(test, device)
        with torch.inference_mode():
            return np.concatenate([head(body(held.take(r))).softmax(1).cpu().numpy()
                                   for _, r in index_chunks(np.arange(test.shape[0]))])

    return probabilities


def training_dynamics(emb: np.ndarray, y: np.ndarray, classes: int, cfg, device) -> Dynamics:
    """`emb` (n, d) float16 or float32 (an ndarray or a memmap), `y` (n,) class indices in [0, classes)."""
    import torch

    n, dim = emb.shape
    x = _Rows(emb, device)
    y_all = torch.from_numpy(y.astype(np.int64)).to(device)
    sums = {k: np.zeros(n) for k in ("el2n", "grand", "forgetting", "aum", "learn", "prob", "runs")}
    oof = np.zeros((n, classes))
    oof_runs = np.zeros(n)
    for seed in range(cfg.seeds):
        rng = np.random.default_rng(seed)
        fold = _folds(y, cfg.folds, rng)
        for f in range(cfg.folds):
            train = np.flatnonzero(fold != f) if cfg.folds > 1 else np.arange(n)
            held = np.flatnonzero(fold == f) if cfg.folds > 1 else np.zeros(0, dtype=np.int64)
            body, head = _model(dim, classes, cfg.hidden, seed * 1000 + f, device)
            opt = torch.optim.AdamW([*body.parameters(), *head.parameters()], lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
            yt = y_all[torch.from_numpy(train).to(device)]
            correct_before = torch.zeros(train.size, dtype=torch.bool, device=device)
            forgets = torch.zeros(train.size, device=device)
            margins = torch.zeros(train.size, device=device)
            probs = torch.zeros(train.size, device=device)
            last_wrong = torch.full((train.size,), -1, dtype=torch.int64, device=device)
            gen = torch.Generator().manual_seed(seed * 1000 + f)
            for epoch in range(cfg.epochs):
                _epoch(body, head, opt, x, train, yt, cfg.batch_size, gen)
                early = epoch + 1 == min(cfg.early_epoch, cfg.epochs)
                with torch.inference_mode():
                    for part, rows in index_chunks(train):
                        hidden = body(x.take(rows))
                        logits = head(hidden)
                        label = yt[part]
                        correct = logits.argmax(1) == label
                        forgets[part] += (correct_before[part] & ~correct).float()
                        correct_before[part] = correct
                        given = logits.gather(1, label[:, None])[:, 0]
                        other = logits.scatter(1, label[:, None], float("-inf")).max(1).values
                        margins[part] += given - other
                        p = logits.softmax(1)
                        probs[part] += p.gather(1, label[:, None])[:, 0]
                        last_wrong[part] = torch.where(correct, last_wrong[part],
                                                       torch.full_like(last_wrong[part], epoch))
                        if early:
                            err = (p - torch.nn.functional.one_hot(label, classes).float()).norm(dim=1)
                            sums["el2n"][rows] += err.cpu().numpy()
                            sums["grand"][rows] += (err * (hidden.pow(2).sum(1) + 1).sqrt()).cpu().numpy()
            sums["forgetting"][train] += forgets.cpu().numpy()
            sums["aum"][train] += (margins / cfg.epochs).cpu().numpy()
            sums["prob"][train] += (probs / cfg.epochs).cpu().numpy()
            sums["learn"][train] += (last_wrong + 2).cpu().numpy()
            sums["runs"][train] += 1
            with torch.inference_mode():
                for _, rows in index_chunks(held):
                    oof[rows] += head(body(x.take(rows))).softmax(1).cpu().numpy()
                    oof_runs[rows] += 1
    runs = np.maximum(sums["runs"], 1)
    oof = oof / np.maximum(oof_runs, 1)[:, None] if cfg.folds > 1 else oof
    return Dynamics(el2n=sums["el2n"] / runs, grand=sums["grand"] / runs, forgetting=sums["forgetting"] / runs,
                    aum=sums["aum"] / runs, epochs_to_learn=sums["learn"] / runs, train_prob=sums["prob"] / runs,
                    oof=oof)


def label_issues(y: np.ndarray, dyn: Dynamics, filter_by: str = "both") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label_issue, score_label_quality, predicted class): cleanlab's confident joint says how many labels are
    wrong (`filter_by`: "both" = rows both of cleanlab's pruning rules flag, its most conservative count); the
    combined quality, the mean of cleanlab's self-confidence and sigmoid(AUM), says which. Both choices were
    measured on bench/selection.py (README): against the default count and the in-training probability they raise
    F1 in all three noise settings."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = dyn.oof / dyn.oof.sum(1, keepdims=True).clip(min=1e-12)
    # n_jobs=1: cleanlab's default forks a multiprocessing.Pool, and a fork of a process running threads (Prefect,
    # torch, polars) can deadlock the child on a lock held at fork time (seen: the demo run hung in a SemLock)
    flagged = find_label_issues(labels=y, pred_probs=probs, filter_by=filter_by, n_jobs=1)
    quality = 0.5 * get_label_quality_scores(y, probs) + 0.5 / (1.0 + np.exp(-dyn.aum))
    issue = np.zeros(y.size, dtype=bool)
    count = int(flagged.sum())
    if count:
        issue[np.argsort(quality, kind="stable")[:count]] = True
    return issue, quality, probs.argmax(1)


def train_head(good: np.ndarray, other: np.ndarray, steps: int = 200, l2: float = 1e-3, seed: int = 0
               ) -> tuple[np.ndarray, float]:
    """Logistic regression, good = 1 vs other = 0, classes weighted equally, full-batch L-BFGS in torch."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(np.concatenate([good, other]).astype(np.float32))
    y = torch.cat([torch.ones(len(good)), torch.zeros(len(other))])
    weight = torch.where(y == 1, 0.5 / max(len(good), 1), 0.5 / max(len(other), 1))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * weight).sum()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().astype(np.float32), float(b.detach()[0])
