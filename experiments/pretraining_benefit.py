r"""The paper's claim in miniature: does OptSimMIM / OptTranslator pretraining help fine-tuning?

1. Pretrains the demo model with OptSimMIM and with OptTranslator on synthetic SSL4SAR
   (``configs/pretrain.py:demo`` / ``:demo_opt_translator``).
2. Fine-tunes a from-scratch model and one from each pretraining run on the first N labelled
   synthetic CaFFe training scenes (N in ``--labelled``), for each seed in ``--seeds``
   (``configs/finetune.py:demo``; the same steps, schedule and augmentation for every arm).
3. Scores every fine-tuned model once, at its last step (no model selection), on the held-out
   synthetic test glaciers (COL, Mapple): MDE (m and px), missing fronts, zone IoU.
4. Writes ``results.json``, ``results.md`` (mean ± std over seeds + two-sided Mann–Whitney U
   of each pretrained arm against scratch, per N and pooled over N) and ``results.png``.

Everything runs in this process, one run after the other; finished runs are reused when the
script is started again with the same ``--workdir``::

    python experiments/pretraining_benefit.py --workdir /tmp/ptb            # full
    python experiments/pretraining_benefit.py --workdir /tmp/ptb_q --quick  # toy sizes (CI)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssl4sar_jax import io_utils  # noqa: E402  (after the path set-up)

ARMS = ("scratch", "opt_simmim", "opt_translator")
METRICS = (
    ("val/front/mde_m", "MDE (m)"),
    ("val/front/mde_px", "MDE (px)"),
    ("val/front/missing_fronts", "missing fronts"),
    ("val/zones/iou_mean", "mean IoU"),
    ("val/zones/iou_glacier", "glacier IoU"),
)


def load_config(name: str, variant: str):
    """``configs/<name>.py:<variant>`` (configs/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def apply(config, overrides: dict[str, Any]):
    """Sets dotted keys (``"optim.learning_rate"``); unknown keys fail like the command line."""
    from ssl4sar_jax import config_lib

    config_lib.apply_overrides(config, overrides)
    return config


def _run(config, workdir: Path) -> dict:
    """Trains (or reuses) one run; returns its final validation metrics."""
    from ssl4sar_jax import train_lib

    done = workdir / "final_metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    summary = train_lib.train_and_evaluate(config, str(workdir))
    final = {"step": summary["final_step"], "wall_time_s": time.perf_counter() - t0}
    if summary["val_history"]:
        final.update({k: v for k, v in summary["val_history"][-1].items() if k != "step"})
    io_utils.write_json_atomic(done, final, default=float)
    return final


def plan(args) -> dict[str, Any]:
    """The sizes of the experiment (full or ``--quick``)."""
    if args.quick:
        from ssl4sar_jax.models import ModelConfig

        # A micro model (32² input, two Swin stages of one block) so the whole pipeline runs
        # in a couple of minutes.
        micro = ModelConfig.named(
            "tiny", img_size=32, depths=(1, 1), num_heads=(1, 2), pretrained_window_sizes=(0, 0)
        ).to_dict()
        return dict(
            pretrain_variant={"opt_simmim": "smoke", "opt_translator": "smoke_opt_translator"},
            finetune_variant="smoke",
            pretrain={
                "model": micro,
                "total_steps": 2,
                "val.every_steps": 2,
                "checkpoint.every_steps": 2,
            },
            finetune={
                "model": micro,
                "data.sampler.centre_size": 16,
                "total_steps": 2,
                "val.max_images": 2,
                "checkpoint.every_steps": 2,
            },
        )
    from ssl4sar_jax.models import ModelConfig

    model = ModelConfig.named("tiny", img_size=args.context).to_dict()
    return dict(
        pretrain_variant={"opt_simmim": "demo", "opt_translator": "demo_opt_translator"},
        finetune_variant="demo",
        pretrain={
            "model": model,
            "total_steps": args.pretrain_steps,
            "val.every_steps": args.pretrain_steps,
            "checkpoint.every_steps": args.pretrain_steps,
            "val.at_start": False,
        },
        finetune={
            "model": model,
            "data.sampler.centre_size": args.context // 2,
            "total_steps": args.finetune_steps,
            "optim.warmup_steps": max(1, args.finetune_steps // 10),
            **({"optim.learning_rate": args.finetune_lr} if args.finetune_lr > 0 else {}),
            "checkpoint.every_steps": args.finetune_steps,
            "val.write_pictures_every": 0,
        },
    )


def constant_predictor_l1(config, batches: int = 20) -> dict[str, float]:
    """How far a constant image is from the pretraining targets, on the run's val batches.

    The per-band median of ``batches`` training batches (the L1-optimal constant) is scored
    with the dense L1 of OptTranslator on the same validation batches the pretraining's
    ``val/loss`` uses. A pretraining whose ``val/loss`` is not clearly below this learned
    little more than the bands' average brightness, so it has little to transfer. (OptSimMIM
    scores masked tokens only; with random masks the constant's expected L1 is the same.)
    """
    import numpy as np

    from ssl4sar_jax import tasks

    task = tasks.get_task(config)
    sources = task.prepare_data()
    train = task.train_iterator(sources, seed=0)
    optical = np.concatenate([np.asarray(next(train)["optical"]) for _ in range(batches)])
    bands = optical.reshape(-1, optical.shape[-1])
    median, mean = np.median(bands, axis=0), bands.mean(axis=0)
    val = task.val_iterator(sources)
    l1_median, l1_mean = [], []
    for _ in range(config.val.num_batches):
        target = np.asarray(next(val)["optical"])
        l1_median.append(float(np.abs(target - median).mean()))
        l1_mean.append(float(np.abs(target - mean).mean()))
    return {"l1_band_median": float(np.mean(l1_median)), "l1_band_mean": float(np.mean(l1_mean))}


def run_all(args) -> dict:
    sizes = plan(args)
    root = Path(args.workdir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    common = {"data.data_dir": args.data_dir} if args.data_dir else {}
    pretrained: dict[str, Path] = {}
    results: dict[str, Any] = {"pretrain": {}, "finetune": []}
    for arm in ARMS[1:]:
        cfg = load_config("pretrain", sizes["pretrain_variant"][arm])
        cfg = apply(cfg, {**common, **sizes["pretrain"], "seed": 0})
        wd = root / f"pretrain_{arm}"
        print(f"[pretraining_benefit] pretrain {arm} -> {wd}", flush=True)
        results["pretrain"][arm] = _run(cfg, wd)
        results["pretrain"][arm]["constant"] = constant_predictor_l1(cfg)
        pretrained[arm] = wd
    runs = [(arm, n, s) for n in args.labelled for arm in ARMS for s in args.seeds]
    t0 = time.perf_counter()
    for i, (arm, n, seed) in enumerate(runs):
        cfg = load_config("finetune", sizes["finetune_variant"])
        total = int(sizes["finetune"]["total_steps"])
        over = {
            **common,
            **sizes["finetune"],
            "seed": seed,
            "data.train_split": f"train[:{n}]",
            "data.val_split": "test",  # held-out glaciers; scored once, at the last step
            "val.every_steps": total,
            "val.at_start": False,
        }
        if arm != "scratch":
            over.update({"init.mode": "workdir", "init.path": str(pretrained[arm])})
        cfg = apply(cfg, over)
        wd = root / f"finetune_{arm}_n{n}_seed{seed}"
        elapsed = time.perf_counter() - t0
        eta = f", ETA {elapsed / i * (len(runs) - i) / 60:.1f} min" if i else ""
        print(f"[pretraining_benefit] {i + 1}/{len(runs)} {wd.name}{eta}", flush=True)
        final = _run(cfg, wd)
        results["finetune"].append(dict(arm=arm, labelled=n, seed=seed, **final))
    return results


def _mean_std(values: list[float]) -> str:
    import numpy as np

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3g}"
    return f"{v.mean():.3g} ± {v.std(ddof=1):.2g}"


def _metric(row: dict, key: str) -> float:
    value = row.get(key, math.nan)
    if key == "val/front/mde_m" and value == 7777:
        return math.nan  # the reference's "undefined" value (no image had a front)
    if key == "val/front/mde_px" and row.get("val/front/mde_m") == 7777:
        return math.nan
    return float(value)


def summarise(results: dict, labelled, seeds) -> str:
    """Markdown table (mean ± std over seeds) and Mann–Whitney U tests against scratch."""
    from scipy.stats import mannwhitneyu

    rows = results["finetune"]
    header = "| init | labelled scenes | " + " | ".join(name for _, name in METRICS) + " |"
    lines = [header, "|" + "---|" * (2 + len(METRICS))]
    for n in labelled:
        for arm in ARMS:
            sel = [r for r in rows if r["arm"] == arm and r["labelled"] == n]
            cells = [_mean_std([_metric(r, k) for r in sel]) for k, _ in METRICS]
            lines.append(f"| {arm} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "Two-sided Mann–Whitney U, pretrained vs scratch (per-seed values):", ""]
    lines += ["| init | labelled | MDE (px) U, p | mean IoU U, p |", "|---|---|---|---|"]
    for arm in ARMS[1:]:
        for n in [*labelled, "all"]:

            def values(a, key, n=n):
                return [
                    _metric(r, key)
                    for r in rows
                    if r["arm"] == a and (n == "all" or r["labelled"] == n)
                ]

            cells = []
            for key in ("val/front/mde_px", "val/zones/iou_mean"):
                a = [v for v in values(arm, key) if math.isfinite(v)]
                b = [v for v in values("scratch", key) if math.isfinite(v)]
                if len(a) < 2 or len(b) < 2:
                    cells.append("–")
                    continue
                test = mannwhitneyu(a, b, alternative="two-sided")
                cells.append(f"{test.statistic:.1f}, {test.pvalue:.3f}")
            lines.append(f"| {arm} | {n} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Seeds {list(seeds)}; MDE over the test images with a predicted front (missing "
        "fronts counted separately); scored at the last fine-tuning step."
    )
    lines += [
        "",
        "What the pretraining learned: its final validation L1 against a constant image (the",
        "training bands' per-band median / mean) on the same validation batches:",
        "",
        "| pretraining | steps | val L1 | constant median L1 | constant mean L1 |",
        "|---|---|---|---|---|",
    ]
    for arm, info in results["pretrain"].items():
        const = info.get("constant", {})
        lines.append(
            f"| {arm} | {info.get('step', '–')} | {info.get('val/loss', math.nan):.4f} | "
            f"{const.get('l1_band_median', math.nan):.4f} | "
            f"{const.get('l1_band_mean', math.nan):.4f} |"
        )
    return "\n".join(lines)


def plot(results: dict, labelled, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = results["finetune"]
    keys = (("val/front/mde_px", "test MDE (px)"), ("val/zones/iou_mean", "test mean IoU"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (key, label) in zip(axes, keys, strict=True):
        for j, arm in enumerate(ARMS):
            for i, n in enumerate(labelled):
                v = [_metric(r, key) for r in rows if r["arm"] == arm and r["labelled"] == n]
                v = np.asarray([x for x in v if math.isfinite(x)])
                x = i + (j - 1) * 0.22
                ax.scatter(np.full(len(v), x), v, s=14, color=f"C{j}", alpha=0.7)
                if len(v):
                    ax.errorbar(x, v.mean(), yerr=v.std() if len(v) > 1 else 0, fmt="_",
                                color=f"C{j}", capsize=4, ms=14,
                                label=arm if i == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(labelled)), [f"{n} scenes" for n in labelled])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Fine-tuning from scratch vs from OptSimMIM / OptTranslator (synthetic)")
    fig.tight_layout()
    io_utils.save_figure(fig, path, dpi=90)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--quick", action="store_true", help="toy sizes (the CI test)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--labelled", type=int, nargs="+", default=[10, 50])
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--context", type=int, default=128, help="model input / crop side (px)")
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=0.0,
        help="fine-tuning learning rate (0 = the demo recipe's; the 2026-12-01 table used 2e-3)",
    )
    p.add_argument("--data-dir", default="", help="TFDS data dir (default: the configs')")
    p.add_argument("--cpu-devices", type=int, default=2, help="XLA CPU devices (0 = leave)")
    args = p.parse_args(argv)
    if any(n <= 0 for n in args.labelled):
        p.error(f"--labelled must be positive, got {args.labelled}")
    if args.cpu_devices and "JAX_NUM_CPU_DEVICES" not in os.environ:
        import jax

        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    import jax

    if not jax.config.jax_compilation_cache_dir:
        # Every arm and seed runs the same programs: compile them once (persistent cache).
        cache = Path(args.workdir).expanduser().resolve() / "jax_cache"
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    t0 = time.perf_counter()
    results = run_all(args)
    results["args"] = vars(args)
    results["wall_time_s"] = time.perf_counter() - t0  # this invocation (finished runs reused)
    # The training runs' own wall times, which stay right when runs were reused.
    results["runs_wall_time_s"] = sum(
        float(r.get("wall_time_s", 0.0))
        for r in [*results["pretrain"].values(), *results["finetune"]]
    )
    root = Path(args.workdir).expanduser().resolve()
    table = summarise(results, args.labelled, args.seeds)
    print(table)
    for name, text in (
        ("results.json", json.dumps(results, indent=2, default=float)),
        ("results.md", table + "\n"),
    ):
        io_utils.write_text_atomic(root / name, text)
    plot(results, args.labelled, root / "results.png")
    print(
        f"[pretraining_benefit] done in {results['wall_time_s'] / 60:.1f} min (training runs "
        f"{results['runs_wall_time_s'] / 60:.1f} min); {root}"
    )
    return results


if __name__ == "__main__":
    main()
