r"""Synthetic vs real SAR scenes: histograms, texture, class fractions, fronts; table + figure.

Runs on any two CaFFe ``data_raw/`` folders (or generates the synthetic one)::

    python experiments/synthetic_vs_real.py --real /path/to/real/data_raw \
        --out-md /tmp/svr.md --out-fig docs/images/synthetic_vs_real.png
    python experiments/synthetic_vs_real.py --real A/data_raw --synthetic B/data_raw

Prints (and writes with ``--out-md``) a Markdown table: per-class mean / std of the grey value,
histogram overlap (1 = same distribution), median texture features, class area fractions, front
length and tortuosity, and the held-out balanced accuracy of a texture-only glacier-vs-rock
classifier. The figure shows real and synthetic images side by side with per-class histograms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl4sar_jax import io_utils  # noqa: E402
from ssl4sar_jax.data import scene_stats, synthetic  # noqa: E402


def _table(real: dict, syn: dict, acc: dict[str, float]) -> str:
    names = scene_stats.CLASS_NAMES
    overlap = scene_stats.histogram_overlap(real["hist"], syn["hist"])
    lines = [
        f"| statistic | real ({real['count']} images) | synthetic ({syn['count']} images) |",
        "|---|---|---|",
    ]
    for c, name in enumerate(names):
        lines.append(
            f"| {name}: grey value mean ± std | {real['mean'][c]:.1f} ± {real['std'][c]:.1f} | "
            f"{syn['mean'][c]:.1f} ± {syn['std'][c]:.1f} (histogram overlap {overlap[c]:.2f}) |"
        )
    for name in names[1:]:
        rt, st = real["texture"][name], syn["texture"][name]
        if not rt or not st:
            continue
        for feat in scene_stats.TEXTURE_FEATURES:
            lines.append(f"| {name}: {feat} (median) | {rt[feat]:.3f} | {st[feat]:.3f} |")
    lines.append(
        "| class area fraction NA / rock / glacier / ocean | "
        + " / ".join(f"{v:.2f}" for v in real["fraction"])
        + " | "
        + " / ".join(f"{v:.2f}" for v in syn["fraction"])
        + " |"
    )
    lines.append(f"| NA pixels with grey value 0 | {real['na_zero']:.3f} | {syn['na_zero']:.3f} |")
    lines.append(
        f"| front length (px, median) / per image side | {real['front_length']:.0f} / "
        f"{real['front_length_rel']:.2f} | {syn['front_length']:.0f} / {syn['front_length_rel']:.2f} |"
    )
    lines.append(
        f"| front tortuosity (length / end-to-end, median) | {real['tortuosity']:.2f} | "
        f"{syn['tortuosity']:.2f} |"
    )
    lines.append(
        "| texture-only glacier-vs-rock classifier, held-out balanced accuracy (chance 0.50) | "
        f"{acc['real']:.3f} | {acc['synthetic']:.3f} |"
    )
    return "\n".join(lines)


def _figure(path: Path, real_scenes, syn_scenes, real: dict, syn: dict, num: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["black", "saddlebrown", "lightskyblue", "navy"])

    def pick(scenes):
        by_glacier: dict[str, list] = {}
        for s in scenes:
            by_glacier.setdefault(s.glacier, []).append(s)
        chosen = [v[len(v) // 2] for v in by_glacier.values()]
        rest = [s for s in scenes if s not in chosen]
        return (chosen + rest[:: max(1, len(rest) // num)])[:num]

    rows = [("real", pick(real_scenes)), ("synthetic", pick(syn_scenes))]
    fig, axes = plt.subplots(5, num, figsize=(2.8 * num, 14.5))
    for r, (label, scenes) in enumerate(rows):
        for col, s in enumerate(scenes):
            ax_sar, ax_z = axes[2 * r, col], axes[2 * r + 1, col]
            ax_sar.imshow(s.sar, cmap="gray", vmin=0, vmax=255)
            ax_sar.set_title(f"{label}: {s.stem[:28]}", fontsize=7)
            ax_z.imshow(s.zones, cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
            fy, fx = np.nonzero(s.front)
            ax_z.scatter(fx, fy, s=0.2, c="red")
            for ax in (ax_sar, ax_z):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[2 * r, 0].set_ylabel(f"{label} SAR")
        axes[2 * r + 1, 0].set_ylabel(f"{label} zones + front")
    centres = (np.arange(real["hist"].shape[1]) + 0.5) * 256 / real["hist"].shape[1]
    colours = ["black", "saddlebrown", "deepskyblue", "navy"]
    for c, name in enumerate(scene_stats.CLASS_NAMES):
        ax = axes[4, c] if c < num else None
        if ax is None:
            continue
        ax.plot(centres, real["hist"][c], "-", color=colours[c], label="real")
        ax.plot(centres, syn["hist"][c], "--", color=colours[c], label="synthetic")
        ax.set_title(f"{name}: grey-value histogram", fontsize=8)
        ax.legend(fontsize=7)
        ax.set_yticks([])
    for c in range(4, num):
        axes[4, c].axis("off")
    fig.suptitle("Real CaFFe (256² copy) vs synthetic CaFFe (ssl4sar_jax.data.synthetic)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    io_utils.save_figure(fig, path, dpi=75)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--real", required=True, help="real CaFFe data_raw/ folder")
    p.add_argument("--synthetic", help="synthetic data_raw/ (default: generate one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated synthetic set")
    p.add_argument("--count-scale", type=float, default=0.08)
    p.add_argument("--max-images", type=int, default=80, help="per split and source (0 = all)")
    p.add_argument("--out-md", help="write the Markdown table here")
    p.add_argument("--out-fig", help="write the side-by-side PNG here")
    args = p.parse_args(argv)
    for flag, value in (("--real", args.real), ("--synthetic", args.synthetic)):
        if value and not Path(value).is_dir():
            p.error(f"{flag} {value!r} is not a folder (expected a CaFFe data_raw/)")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        syn_root = args.synthetic
        if not syn_root:
            spec = synthetic.SyntheticCaffeSpec(seed=args.seed, count_scale=args.count_scale)
            syn_root = synthetic.generate_caffe(tmp, spec)
            print(f"generated synthetic CaFFe ({spec}) in {time.time() - t0:.1f} s")
        real_scenes = scene_stats.load_scenes(args.real, max_images=args.max_images)
        syn_scenes = scene_stats.load_scenes(syn_root, max_images=args.max_images)
    real = scene_stats.scene_statistics(real_scenes)
    syn = scene_stats.scene_statistics(syn_scenes)
    acc = {
        "real": scene_stats.texture_classifier_accuracy(real_scenes),
        "synthetic": scene_stats.texture_classifier_accuracy(syn_scenes),
    }
    table = _table(real, syn, acc)
    print(table)
    print(f"({time.time() - t0:.1f} s)")
    if args.out_md:
        out = Path(args.out_md)
        out.parent.mkdir(parents=True, exist_ok=True)
        io_utils.write_text_atomic(out, table + "\n")
    if args.out_fig:
        _figure(Path(args.out_fig), real_scenes, syn_scenes, real, syn)
        print("wrote", args.out_fig)
    return dict(real=real, synthetic=syn, accuracy=acc)


if __name__ == "__main__":
    main()
