"""The demo pictures of the README and docs/training.md, from finished demo workdirs.

Commands (the workdirs of ``python -m ssl4sar_jax.main --config configs/finetune.py:demo``)::

    # README: validation overlays at the final step, stacked
    python experiments/demo_figures.py overlays --workdir /tmp/spx/demo_s0 \\
        --stems DBE_1996-03-20_ERS_20_2_465 JAC_2009-12-24_TSX_6_3_092 \\
        --out docs/images/demo_val_overlays.png
    # docs/training.md: the three panels of one overlay cropped to a region (pixels of a panel)
    python experiments/demo_figures.py crop --workdir /tmp/ft_demo_final \\
        --stem DBE_1996-03-20_ERS_20_2_465 --box 40 20 110 160 --scale 3 \\
        --out docs/images/demo_cliff_rock_band.png
    # README: training loss of two runs (e.g. float32 vs bfloat16)
    python experiments/demo_figures.py losses --workdirs /tmp/spx/demo_s0 /tmp/spx/demo_bf16_s0 \\
        --labels "float32 (seed 0)" "bfloat16 compute, float32 params (seed 0)" \\
        --out docs/images/demo_bf16_vs_f32.png

Overlays are the validation's ``val/step_XXXXXX/overlays/<stem>.png`` (three panels side by side:
SAR with fronts, predicted zones, true zones); the last validation step is used.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssl4sar_jax import io_utils  # noqa: E402


def _overlay(workdir: str, stem: str) -> Image.Image:
    steps = sorted(glob.glob(os.path.join(workdir, "val", "step_*")))
    if not steps:
        raise SystemExit(f"{workdir}: no val/step_* folder (run the demo with pictures first)")
    path = os.path.join(steps[-1], "overlays", f"{stem}.png")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such overlay")
    return Image.open(path).convert("RGB")


def _save(image: Image.Image, out: str) -> None:
    with io_utils.atomic_path(out) as tmp:
        image.save(tmp, format="PNG")
    print(out, image.size)


def overlays(args) -> None:
    images = [_overlay(args.workdir, s) for s in args.stems]
    width = max(i.size[0] for i in images)
    images = [i.resize((width, round(i.size[1] * width / i.size[0]))) for i in images]
    gap = 8
    canvas = Image.new(
        "RGB", (width, sum(i.size[1] for i in images) + gap * (len(images) - 1)), "white"
    )
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.size[1] + gap
    _save(canvas, args.out)


def crop(args) -> None:
    image = _overlay(args.workdir, args.stem)
    panel = image.size[0] // 3
    x0, y0, x1, y1 = args.box
    size = ((x1 - x0) * args.scale, (y1 - y0) * args.scale)
    panels = [
        image.crop((k * (panel + 1) + x0, y0, k * (panel + 1) + x1, y1)).resize(size, Image.NEAREST)
        for k in range(3)
    ]
    gap = 10
    canvas = Image.new("RGB", (3 * size[0] + 2 * gap, size[1]), "white")
    for k, p in enumerate(panels):
        canvas.paste(p, (k * (size[0] + gap), 0))
    _save(canvas, args.out)


def losses(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(args.labels) != len(args.workdirs):
        raise SystemExit("--labels needs one label per --workdirs entry")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for workdir, label, style in zip(
        args.workdirs, args.labels, ("o-", "s--", "^:", "d-."), strict=False
    ):
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        points = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (logged batches)")
    ax.set_title(args.title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    io_utils.save_figure(fig, args.out, dpi=110)
    plt.close(fig)
    print(args.out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overlays")
    o.add_argument("--workdir", required=True)
    o.add_argument("--stems", nargs="+", required=True)
    o.add_argument("--out", required=True)
    c = sub.add_parser("crop")
    c.add_argument("--workdir", required=True)
    c.add_argument("--stem", required=True)
    c.add_argument("--box", type=int, nargs=4, required=True, metavar=("X0", "Y0", "X1", "Y1"))
    c.add_argument("--scale", type=int, default=3)
    c.add_argument("--out", required=True)
    los = sub.add_parser("losses")
    los.add_argument("--workdirs", nargs="+", required=True)
    los.add_argument("--labels", nargs="+", required=True)
    los.add_argument("--title", default="Fine-tuning demo: float32 vs bfloat16 on CPU")
    los.add_argument("--out", required=True)
    args = p.parse_args(argv)
    {"overlays": overlays, "crop": crop, "losses": losses}[args.cmd](args)


if __name__ == "__main__":
    main()
