"""README's commands are the ones that work: the quick start gets the data first, and CI runs the
test command README gives."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks_after(heading: str) -> list[str]:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.*?)```", section, flags=re.S)


def test_quick_start_installs_the_data_before_the_first_sweep():
    first = code_blocks_after("Quick start")[0].splitlines()
    assert first[0] == "sudo apt-get install -y dataset-fashion-mnist"
    assert first[1].endswith("python -m tuner.run sweeps/fashion-quick.yaml")


def test_ci_runs_the_readme_test_command():
    test_block = code_blocks_after("Quick start")[1].splitlines()
    assert test_block[0] == "sudo apt-get install -y dataset-fashion-mnist chromium"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "need+=(dataset-fashion-mnist)" in ci and "need+=(chromium)" in ci
    assert test_block[1].replace("pip install", "python3 -m pip install -q").replace(
        "&& python -m pytest", "&& python3 -m pytest") in ci


def test_tuner_is_a_regular_package_with_its_version():
    from importlib.metadata import version

    import tuner

    assert tuner.__file__ == str(ROOT / "tuner" / "__init__.py")
    assert tuner.__version__ == version("tuner")
