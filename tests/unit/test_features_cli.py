"""`siglip-serve features IMG... --layer K --out feats.npz|.safetensors`, in-process through `cli.main`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from sample_images import encode, photo_like

import siglip_serve
from siglip_serve.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One loose file and a folder of two (one in a subfolder), plus a hidden file that is skipped."""
    root = tmp_path_factory.mktemp("images")
    (root / "folder" / "sub").mkdir(parents=True)
    files = {"loose": root / "loose.png", "a": root / "folder" / "a.jpg", "b": root / "folder" / "sub" / "b.png"}
    for seed, (name, path) in enumerate(files.items()):
        path.write_bytes(encode(photo_like(40 + 8 * seed, 30, seed=seed), "JPEG" if name == "a" else "PNG"))
    (root / "folder" / ".hidden.png").write_bytes(encode(photo_like(8, 8), "PNG"))
    (root / "folder" / "notes.txt").write_text("not an image")
    return {**files, "root": root, "folder": root / "folder"}


@pytest.fixture(scope="module")
def tiny(siglip1_dir: Path) -> siglip_serve.Model:
    return siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")


def test_npz_holds_every_image_of_files_and_folders(images, tiny, siglip1_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "feats.npz"
    code = main(["features", str(images["loose"]), str(images["folder"]), "--out", str(out), "--layer", "-2",
                 "--model", str(siglip1_dir), "--device", "cpu", "--dtype", "float32", "--pooled",
                 "--batch-size", "2"])
    assert code == 0, capsys.readouterr().err
    expected_paths = [str(images[k]) for k in ("loose", "a", "b")]
    expected = tiny.encode_patches(expected_paths, -2, pooled=True)
    with np.load(out) as stored:
        assert stored["paths"].tolist() == expected_paths
        assert (int(stored["layer"]), int(stored["num_layers"])) == (1, 2)
        assert stored["grids"].tolist() == [[4, 4]] * 3 and stored["offsets"].tolist() == [0, 16, 32, 48]
        assert stored["features"].shape == (48, 32) and stored["features"].dtype == np.float32
        for i, result in enumerate(expected):
            rows = stored["features"][stored["offsets"][i]:stored["offsets"][i + 1]]
            np.testing.assert_allclose(rows, result.features.numpy(), atol=1e-6, rtol=0)
            np.testing.assert_allclose(stored["pooled"][i], result.pooled.numpy(), atol=1e-6, rtol=0)
    assert "wrote 3 images (48 tokens x 32, layer 1 of 2)" in capsys.readouterr().err


def test_safetensors_float16_is_float32_rounded(images, tiny, siglip1_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.safetensors"
    assert main(["features", str(images["loose"]), "--out", str(out), "--model", str(siglip1_dir),
                 "--device", "cpu", "--dtype", "float32", "--float16"]) == 0
    expected = tiny.encode_patches([images["loose"]])[0].features.numpy()
    with safe_open(str(out), framework="numpy") as stored:
        assert set(stored.keys()) == {"features", "grids", "offsets"}  # no pooled unless asked
        features = stored.get_tensor("features")
        metadata = stored.metadata()
    assert features.dtype == np.float16
    np.testing.assert_array_equal(features, np.asarray(expected, np.float32).astype(np.float16))
    assert json.loads(metadata["paths"]) == [str(images["loose"])]
    assert (metadata["layer"], metadata["num_layers"]) == ("2", "2")


def test_a_bad_image_is_reported_and_left_out(images, siglip1_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "feats.npz"
    code = main(["features", str(bad), str(images["loose"]), "--out", str(out), "--model", str(siglip1_dir),
                 "--device", "cpu", "--dtype", "float32"])
    assert code == 1
    assert f"error: {bad}:" in capsys.readouterr().err
    with np.load(out) as stored:
        assert stored["paths"].tolist() == [str(images["loose"])]


@pytest.mark.parametrize(("extra", "message"), [
    (["--layer", "3"], "--layer: layer 3 is out of range"),
    (["--out", "feats.h5"], "--out must end with .npz or .safetensors"),
])
def test_bad_options_fail_before_any_image_is_read(images, siglip1_dir: Path, tmp_path: Path, extra: list[str],
                                                   message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["features", str(images["loose"]), "--out", str(tmp_path / "f.npz"), "--model", str(siglip1_dir),
            "--device", "cpu", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and ("-3..2" in err or "--out" in err)
    assert not (tmp_path / "f.npz").exists()


def test_features_help_does_not_import_torch() -> None:
    code = ("import sys, contextlib, io\n"
            "from siglip_serve.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            "        main(['features', '--help'])\n"
            "    except SystemExit as exc:\n"
            "        assert exc.code == 0, exc.code\n"
            "assert '--layer' in out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
