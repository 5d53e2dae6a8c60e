"""The one atomic-write helper: complete files, ordinary permissions, nothing left on error."""

import json
import os
import stat

import pytest

from ssl4sar_jax import io_utils


def test_atomic_files_get_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        io_utils.write_json_atomic(tmp_path / "a.json", {"x": 1})
        with io_utils.atomic_path(tmp_path / "sub" / "b.bin") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"abc")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "sub" / "b.bin"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"abc"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    io_utils.write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with io_utils.atomic_open(path, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    io_utils.write_lines_atomic(path, ["a", "b"])
    assert path.read_text() == "a\nb\n"


def test_the_temporary_keeps_the_extension_for_format_inference(tmp_path):
    with io_utils.atomic_path(tmp_path / "pic.png") as tmp:
        assert tmp.endswith(".png") and os.path.basename(tmp).startswith(".tmp_")
        assert os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "wb").close()
    with pytest.raises(ValueError, match="write mode"):
        with io_utils.atomic_open(tmp_path / "x", "r"):
            pass
