r"""Evaluation of fine-tuned checkpoint(s) on a CaFFe split (protocol of Nora-Go/TYRION
``Evaluation.py`` and ``Evaluation_test_time_aug_ensemble.py``).

Reference protocol (default): overlapping tiles at stride 128 with Gaussian blending of the
centre-256 softmax, test split, no TTA; ``--config.tta=True`` adds the 4 rotations, several
``checkpoints`` form an ensemble (mean of probabilities)::

    python -m ssl4sar_jax.main --config configs/evaluate.py --workdir runs/eval \
        --config.checkpoints="('runs/ft_seed0','runs/ft_seed1')" --config.tta=True

Variant ``demo`` evaluates the fine-tuning demo (``/tmp/ft_demo``) on the synthetic test split.
"""

import ml_collections

from ssl4sar_jax import data
from ssl4sar_jax.config_lib import load_sibling

common = load_sibling(__file__, "common")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of variant ``arg`` (see the module docstring)."""
    variant = arg or "paper"
    if variant not in ("paper", "demo"):
        raise ValueError(f"unknown evaluate variant {variant!r}: paper | demo")
    c = ml_collections.ConfigDict()
    c.name = f"evaluate_{variant}"
    c.task = "evaluate"
    c.num_cpu_devices = 0
    # Persistent XLA compilation cache: "auto" (user cache dir), "none", or a directory.
    c.compilation_cache_dir = "auto"
    c.mesh = [("data", -1)]
    c.model = common.model("paper")  # img_size = the context tile side
    c.checkpoints = ()  # run workdirs, checkpoint step dirs or .npz files (ensemble members)
    c.which = "best"  # for workdirs: "best" (lowest val MDE) or "latest"
    c.split = "test"
    c.tta = False
    c.centre_size = 256
    c.stride = 128  # 128: overlapping tiles (reference test protocol); 256: non-overlapping
    c.stitch_mode = ""  # "" = gaussian when overlapping, else plain; or "gaussian" / "plain"
    c.length_rule = "tyrion"  # front pieces of exactly 750 m / r px kept ("caffe": dropped)
    c.batch_size = 8
    c.max_images = 0  # 0 = all
    c.max_overlays = -1  # -1 = all
    # The CaFFe block of configs/common.py (own-data options included, docs/data.md).
    c.data = data.data_config("caffe", config="full")
    if variant == "demo":
        c.num_cpu_devices = 2
        c.model = common.model("tiny", img_size=128)
        c.checkpoints = ("/tmp/ft_demo",)
        c.centre_size = 64
        c.stride = 32
        c.batch_size = 16
        c.data.config = "synthetic"
        c.data.data_dir = common.SYNTHETIC_DATA_DIR
        c.max_overlays = 6
    return c
