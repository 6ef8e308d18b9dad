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


def _fields(model, prefix=""):
    """Every field path of a pydantic section, e.g. data.augment.hflip."""
    from pydantic import BaseModel

    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        inner = info.annotation
        inner = next((a for a in getattr(inner, "__args__", ()) if isinstance(a, type)), inner)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from _fields(inner, f"{path}.")
        else:
            yield path


def test_the_spec_reference_names_every_field_of_the_schema():
    from tuner.spec import Spec

    reference = (ROOT / "docs" / "spec.md").read_text()
    missing = []
    for path in _fields(Spec):
        parts = path.split(".")
        # a field is named in its section's row as `leaf`, or `augment.leaf` for nested ones
        names = {f"`{parts[-1]}`", f"`{'.'.join(parts[1:])}`", f"`{path}`"}
        if not any(n in reference for n in names):
            missing.append(path)
    assert not missing, f"docs/spec.md does not describe: {missing}"


def test_links_between_readme_and_docs_resolve():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(((?:docs/|\.\./|)[\w./-]+\.md)(?:#[\w-]+)?\)", page.read_text()):
            assert (page.parent / target).resolve().is_file(), f"{page.name} links to {target}"


def test_the_readme_spec_is_a_valid_spec(tmp_path):
    from tuner.specfile import load_spec

    block = re.search(r"## A spec in ten lines\n.*?```yaml\n(.*?)```", README, flags=re.S).group(1)
    assert len(block.splitlines()) <= 12
    path = tmp_path / "my-sweep.yaml"
    path.write_text(block)
    spec = load_spec(path)
    assert spec.search.scheduler == "asha" and set(spec.search.parameters) == {"lr", "batch_size"}


def test_the_layout_in_internals_names_every_module_and_nothing_else():
    layout = (ROOT / "docs" / "internals.md").read_text().split("## Layout\n", 1)[1].split("\n## ")[0]
    packages = "|".join(p.parent.name for p in (ROOT / "tuner").glob("*/__init__.py"))
    named = set(re.findall(rf"`(?:tuner/)?((?:(?:{packages})/)?\w+)\.py`", layout))
    modules = {p.relative_to(ROOT / "tuner").with_suffix("").as_posix()
               for p in (ROOT / "tuner").rglob("*.py")}
    assert named == modules, (sorted(modules - named), sorted(named - modules))
