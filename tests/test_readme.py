"""The documentation moves with the code: every ```python block of README.md and docs/*.md runs as
written, the README's speed-up table is the one generated from the committed results, and the
README stays short."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import readme_table  # noqa: E402

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: Pages without examples of their own: notes for contributors.
NO_EXAMPLES = {"design.md"}


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _needs_interpreter(code: str) -> bool:
    """Blocks that put CPU tensors through the kernels (Triton's interpreter on every machine; a
    block that moves its tensors to CUDA when it can runs compiled there)."""
    kernels = re.search(r'backend="triton"|, "triton"\)|fastrnn\.functional\.', code)
    return bool(kernels) and '"cuda"' not in code


EXAMPLES = [
    pytest.param(
        path,
        i,
        id=f"{path.relative_to(ROOT).as_posix()}-{i}",
        marks=[pytest.mark.interpreter] if _needs_interpreter(code) else [],
    )
    for path in PAGES
    for i, code in enumerate(_blocks(path))
]


@pytest.mark.parametrize("path", [p for p in PAGES[1:] if p.name not in NO_EXAMPLES], ids=lambda p: p.name)
def test_every_docs_page_has_examples(path):
    assert _blocks(path), f"{path.relative_to(ROOT)} has no ```python example"


@pytest.mark.parametrize(("path", "index"), EXAMPLES)
def test_example_runs(path, index, monkeypatch):
    monkeypatch.delenv("FASTRNN_TIER", raising=False)
    code = _blocks(path)[index]
    exec(compile(code, f"{path.relative_to(ROOT)} block {index}", "exec"), {"__name__": "__doc_example__"})


def test_readme_speedup_table_is_generated():
    """The table between the markers is exactly what ``python -m benchmarks.readme_table`` writes."""
    text = README.read_text()
    assert readme_table.current_block(text) == readme_table.render(), (
        "README.md's speed-up table differs from the committed results: run python -m benchmarks.readme_table"
    )


def test_readme_table_generator_round_trip(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{readme_table.BEGIN}\nstale\n{readme_table.END}\n\nafter\n")
    assert readme_table.main(["--readme", str(readme), "--check"]) == 1
    assert readme_table.main(["--readme", str(readme)]) == 0
    assert readme_table.main(["--readme", str(readme), "--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n") and text.endswith("\nafter\n")
    assert "| LSTM | fp16 |" in text and "Headline" in text


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 170


def test_docs_speak_to_users():
    """No page speaks of how the project is developed."""
    pattern = re.compile(r"\bl[e]nt\b|\bsess[i]ons?\b|\bissues? \d+|#\d{2}", re.I)  # [e], [i]: not a hit itself
    for path in PAGES:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(ROOT)}:{n}: {line}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_tier_limits_table_is_generated():
    """docs/tiers.md's tier-1 size table is what the release data gives (never typed)."""
    from fastrnn.kernels.report import limits

    page = (Path(__file__).resolve().parents[1] / "docs" / "tiers.md").read_text()
    assert limits.current_block(page) == limits.table(), (
        "docs/tiers.md's tier-1 limits differ from kernels/releases.json: "
        "paste the output of python -m fastrnn.kernels.report --limits-table"
    )


def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    """A built wheel (what ``pip install .`` installs) holds every module of ``fastrnn/`` and
    ``kernels/`` (as ``fastrnn/kernels/``) and the data they read.  Kills: a package folder left
    out of setup.py's list (``fastrnn.seq2seq`` once was: ``python -m fastrnn`` then failed on
    import in a regular install)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a clean copy: a build/ folder left in the checkout would leak into the wheel
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("fastrnn", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("fastrnn-*.whl")
    held = set(zipfile.ZipFile(wheel).namelist())
    shim = ROOT / "fastrnn" / "kernels"  # the source checkout's alias of kernels/, not installed
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fastrnn").rglob("*.py") if shim not in p.parents}
    expected |= {"fastrnn/" + p.relative_to(ROOT).as_posix() for p in (ROOT / "kernels").rglob("*.py")}
    expected |= {"fastrnn/auto_table.json", "fastrnn/kernels/releases.json", "fastrnn/kernels/verified.json"}
    expected |= {
        "fastrnn/kernels/" + p.relative_to(ROOT / "kernels").as_posix() for p in (ROOT / "kernels" / "cuda").iterdir()
    }
    assert not expected - held, sorted(expected - held)


def test_the_drop_in_snippet_runs_beside_a_folder_named_fastrnn(tmp_path):
    """The README's drop-in example, run by a user from the folder that holds a clone (a folder
    named ``fastrnn`` beside the current directory), imports the installed package, not that
    folder as a namespace package.  Holds for the README's install (``pip install ".[...]"``); an
    editable install's finder loses to such a folder, which the README says."""
    import importlib.metadata
    import json as _json
    import subprocess
    import sys

    installs = [d.read_text("direct_url.json") for d in importlib.metadata.distributions(name="fastrnn")]
    if any(_json.loads(t).get("dir_info", {}).get("editable") for t in installs if t):
        pytest.skip("fastrnn is installed editable (pip install -e): the README's install is not")
    (tmp_path / "fastrnn").mkdir()  # the clone's folder, beside the current directory
    code = _blocks(README)[0]
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
