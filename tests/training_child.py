"""A micro training run in a child process, for the fault-injection tests (not a test module).

``python tests/training_child.py SPEC_JSON`` with ``SPEC_JSON`` =
``{"workdir", "data_dir", "cache_dir", "overrides": {dotted key: value}, "kill": KILL}``;
``KILL`` (optional) sends this process SIGKILL at a checkpoint write of step ``kill["step"]``:

* ``{"at": "orbax_tmp", "step": N}``: as soon as orbax's temporary folder of step N appears
  (mid-write: the data is being written, nothing committed);
* ``{"at": "manifest", "step": N}``: after orbax committed step N, before its integrity
  manifest is renamed into place.

Only public APIs are patched (module attributes of ssl4sar_jax), nothing of JAX or orbax.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import threading
import time

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    spec = json.loads(sys.argv[1])
    import jax

    if spec.get("cache_dir"):
        jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from train_helpers import micro_config

    from ssl4sar_jax import checkpointing, train_lib

    config = micro_config("finetune", "smoke", spec["data_dir"], spec.get("num_devices", 1))
    for key, value in spec.get("overrides", {}).items():
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    kill = spec.get("kill")
    if kill and kill["at"] == "manifest":
        original = checkpointing.write_manifest

        def write_then_die(step_dir, step=None):
            if step == kill["step"]:
                _kill_self()
            return original(step_dir, step)

        checkpointing.write_manifest = write_then_die
    elif kill and kill["at"] == "orbax_tmp":
        pattern = os.path.join(
            spec["workdir"], checkpointing.CHECKPOINT_DIR, f"{kill['step']}.orbax-checkpoint-tmp*"
        )

        def watch():
            while not glob.glob(pattern):
                time.sleep(0.0005)
            _kill_self()

        threading.Thread(target=watch, daemon=True).start()
    summary = train_lib.train_and_evaluate(config, spec["workdir"])
    print("SUMMARY", json.dumps({k: summary[k] for k in ("first_step", "final_step", "stopped")}))


if __name__ == "__main__":
    main()
