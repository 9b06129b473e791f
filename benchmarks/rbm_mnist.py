"""Salakhutdinov & Murray (2008): a 500-hidden-unit RBM on binarized MNIST, trained by CD-k or
PCD, then log Z by AIS from the base-rate RBM and the test set's mean ln p(x) = -F(x) - log Z.

    python benchmarks/rbm_mnist.py --k 1 --epochs 1 --temperatures 1000 --out /tmp/rbm.json
    python benchmarks/rbm_mnist.py --k 25 --epochs 100 --device cuda    # the paper's CD-25 row
    python benchmarks/rbm_mnist.py --persistent --k 1 --epochs 50

The paper reports -86.3 nats on the test set for CD-25 (k raised from 1 to 25 during training:
``--k 1 --k-final 25`` raises it linearly over the epochs), with log Z from 100 AIS runs over
14,500 temperatures. Pixels are binarized stochastically, once (``--binarize static``, the
default) or afresh every epoch (``dynamic``); the test set once, with its own seed. Optimizer:
SGD with momentum (``initial_momentum`` for the first ``--momentum-switch-epochs`` epochs) and
weight decay on W, as :mod:`dgm.methods.contrastive` describes. The result's ``log_likelihood``
carries two standard errors: the test set's spread (``_stderr_data``) and log Z's, which is
common to every example (``_stderr_log_z``); ``_stderr`` combines them.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from dgm.data import binarize_fixed, load_dataset, to_unit_interval
from dgm.methods.contrastive import ContrastiveDivergence
from dgm.models.rbm import RBM, ais_log_partition, base_rate_bias, rbm_log_likelihood

#: Salakhutdinov & Murray (2008), Table 1: test ln p(x) (nats) of the 500-hidden RBM, CD-25
PAPER_CD25 = -86.34


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--k", type=int, default=1, help="Gibbs sweeps per update (first epoch)")
    p.add_argument("--k-final", type=int, default=None, help="k at the last epoch (linear)")
    p.add_argument("--persistent", action="store_true", help="PCD instead of CD")
    p.add_argument("--chains", type=int, default=100, help="persistent chains (PCD)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training at most")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--initial-momentum", type=float, default=0.5)
    p.add_argument("--momentum-switch-epochs", type=float, default=5.0)
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--binarize", choices=("static", "dynamic"), default="static")
    p.add_argument("--temperatures", type=int, default=14_500, help="AIS's K")
    p.add_argument("--runs", type=int, default=100, help="AIS runs")
    p.add_argument("--train-limit", type=int, default=None, help="first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return p.parse_args(argv)


def k_at(args: argparse.Namespace, epoch: int) -> int:
    """k for ``epoch`` (0-based): from --k to --k-final linearly over the epochs."""
    if args.k_final is None or args.epochs <= 1:
        return args.k
    return round(args.k + (args.k_final - args.k) * epoch / (args.epochs - 1))


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    data = load_dataset("mnist", data_dir=args.data_dir)
    x_train = to_unit_interval(data.train_images)[: args.train_limit]  # (N, 784) grey levels
    x_test = binarize_fixed(to_unit_interval(data.test_images), args.seed + 1).to(device)
    x_static = binarize_fixed(x_train, args.seed).to(device)
    x_train = x_train.to(device)
    base = base_rate_bias(x_static).float().to(device)  # (784,): b_A, also b's start

    rbm = RBM(x_train.shape[1], args.hidden)
    with torch.no_grad():
        rbm.b.copy_(base)
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / args.batch_size)
    method = ContrastiveDivergence(
        rbm,
        k=args.k,
        persistent=args.persistent,
        chains=args.chains,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        initial_momentum=args.initial_momentum,
        momentum_switch_step=round(args.momentum_switch_epochs * steps_per_epoch),
        device=device,
    )
    order = torch.Generator().manual_seed(args.seed)
    history, step, train_s = [], 0, 0.0
    for epoch in range(args.epochs):
        method.k = k_at(args, epoch)
        method.train_mode()
        x_epoch = torch.bernoulli(x_train) if args.binarize == "dynamic" else x_static
        sums, seen, skipped = torch.zeros(2, dtype=torch.float64), 0, 0
        start = time.perf_counter()
        for index in torch.randperm(n, generator=order).split(args.batch_size):
            (outcome,) = method.step(x_epoch[index.to(device)], index, step)
            step += 1
            if outcome.metrics is None:
                skipped += 1
            else:
                metrics = [outcome.metrics[name].double().sum() for name in method.metric_names]
                sums += torch.stack(metrics).cpu()
                seen += index.numel()
            if args.time_budget is not None and train_s + time.perf_counter() - start > (
                args.time_budget
            ):
                break
        train_s += time.perf_counter() - start
        means = (sums / max(seen, 1)).tolist()
        record = {"epoch": epoch + 1, "k": method.k, "skipped": skipped, "train_s": train_s}
        record |= {f"train_{m}": v for m, v in zip(method.metric_names, means, strict=True)}
        record |= method.evaluate(x_test)
        history.append(record)
        print(json.dumps(record), flush=True)
        if args.time_budget is not None and train_s >= args.time_budget:
            break

    start = time.perf_counter()
    g = torch.Generator(device).manual_seed(args.seed + 2)
    ais = ais_log_partition(rbm, args.temperatures, args.runs, base_visible_bias=base, generator=g)
    ais_s = time.perf_counter() - start
    log_p = rbm_log_likelihood(rbm, x_test, ais.log_z)  # (10000,)
    se_data = log_p.std().item() / math.sqrt(log_p.numel())
    se_z = ais.stderr or 0.0
    result = {
        "log_likelihood": log_p.mean().item(),
        "log_likelihood_stderr": math.hypot(se_data, se_z),
        "log_likelihood_stderr_data": se_data,
        "log_likelihood_stderr_log_z": se_z,
        "log_z": ais.log_z,
        "log_z_stderr": ais.stderr,
        "log_z_interval_3se": list(ais.interval(3.0)),
        "ais": ais.summary(),
        "ais_s": ais_s,
        "train_time_s": train_s,
        "steps": step,
        "paper_cd25": PAPER_CD25,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "history": history,
        "machine": {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }
    print(
        f"test ln p(x) = {result['log_likelihood']:.2f} ± {result['log_likelihood_stderr']:.2f} "
        f"nats; log Z = {ais.log_z:.2f} ± {se_z:.2f} ({args.runs} runs, "
        f"{args.temperatures} temperatures, {ais_s:.0f} s); training {train_s:.0f} s, "
        f"{step} steps (paper, CD-25: {PAPER_CD25})"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
