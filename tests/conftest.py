"""Test set-up: simulated CPU devices before JAX initialises its backend.

Four host devices let sharding tests compare 1-device and 4-device runs in the
same process. Model tests that do not shard simply use device 0.
"""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep TensorFlow (only used by the tfds.load test) quiet and off any GPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
