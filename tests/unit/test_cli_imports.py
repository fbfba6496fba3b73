"""What each `siglip-serve` command imports: only what it needs, so that `classify` starts fast.

Wall time is not asserted (bench/cli_latency.py measures it); the imports that make it slow are. Each check
runs in a fresh interpreter, since the test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sample_images import encode, photo_like

# transformers (~0.5 s for the package, ~3 s more for its model machinery: modeling_utils pulls
# torch.distributed.tensor, dynamo, generation, scipy through the loss package); other commands' modules;
# the server and storage stacks.
NOT_FOR_CLASSIFY = (
    "transformers", "transformers.modeling_utils", "scipy", "torch._dynamo",
    "siglip_serve.accounts", "siglip_serve.jobs", "siglip_serve.training", "siglip_serve.server",
    "siglip_serve.api", "fastapi", "uvicorn", "lancedb", "ray", "openvino",
)


def imported_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """Run `code` in a fresh interpreter; which of `watched` are in sys.modules afterwards."""
    program = (f"import contextlib, io, json, sys\n"
               f"with contextlib.redirect_stdout(io.StringIO()):\n"
               f"{''.join('    ' + line + chr(10) for line in code.splitlines())}"
               f"print(json.dumps(sorted(m for m in {list(watched)!r} if m in sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "picture.png"
    path.write_bytes(encode(photo_like(48, 36, seed=0), "PNG"))
    return path


def test_classify_with_the_demo_model_imports_no_transformers_and_no_other_command(image: Path) -> None:
    code = f"from siglip_serve.cli import main\nassert main(['classify', {str(image)!r}, '--labels', 'red,blue']) == 0"
    assert imported_after(code, (*NOT_FOR_CLASSIFY, "torch")) == ["torch"]  # torch: it does run the model


def test_models_imports_neither_torch_nor_pydantic() -> None:
    code = "from siglip_serve.cli import main\nassert main(['models']) == 0\nassert main(['models', '--json']) == 0"
    assert imported_after(code, ("torch", "pydantic", "siglip_serve.config", *NOT_FOR_CLASSIFY)) == []


@pytest.mark.parametrize(("command", "its_module"), [
    ("serve", "siglip_serve.config"),
    ("embed", "siglip_serve.jobs.cli"),
    ("train", "siglip_serve.training.cli"),
    ("keys", "siglip_serve.accounts.cli"),
])
def test_a_command_s_help_imports_its_own_module_and_not_the_others(command: str, its_module: str) -> None:
    others = {"siglip_serve.jobs.cli", "siglip_serve.training.cli", "siglip_serve.accounts.cli"} - {its_module}
    code = ("from siglip_serve.cli import main\n"
            "try:\n"
            f"    main([{command!r}, '--help'])\n"
            "except SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code\n")
    assert imported_after(code, ("torch", its_module, *sorted(others))) == [its_module]


def test_the_top_level_help_still_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from siglip_serve.cli import COMMANDS, main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name, (help_text, _) in COMMANDS.items():
        assert name in out and help_text.split()[0] in out


def test_a_parser_built_for_one_command_parses_it_as_the_full_parser_does(image: Path) -> None:
    from siglip_serve.cli import build_parser

    argv = ["classify", str(image), "--labels", "a,b", "--top-k", "1", "--json"]
    assert vars(build_parser("classify").parse_args(argv)) == vars(build_parser().parse_args(argv))
