"""The spec file: YAML in, a validated Spec out (with `--set` overrides, every error at once, one
line each), and a Spec back to YAML. What is shown or written of it goes through `redact`, which
keeps credentials out. The schema itself, every field and default, is tuner/spec.py.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuner.errors import InputError
from tuner.spec import DATASET_DEFAULTS, Param, Spec, get_path, param_path, set_path

# A URI anywhere in a text (a storage URI, alone, in `--set run.storage=...`, or in a message).
URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# Query keys whose values are credentials (pyarrow's S3 access_key, secret_key, session_token; any
# other filesystem's key, token or password).
SECRET_QUERY = re.compile(r"key|secret|token|passw|credential|signature", re.IGNORECASE)

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-4 as a float (YAML 1.2), not the string '1e-4'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_spec(path: str | Path, overrides: list[str] = ()) -> Spec:
    """Read, override (`path.to.key=value`) and validate a spec file. Raises InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; give the path of a sweep YAML file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give the path of a sweep YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; a sweep spec is a YAML text file") from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{path}: YAML syntax error{at}: {problem}") from None
    if raw is None:
        raise InputError(f"{path}: file is empty; see sweeps/fashion.yaml for a complete spec")
    if not isinstance(raw, dict):
        raise InputError(
            f"{path}: top level must be a mapping of sections (data, model, train, search, "
            f"resources), got a {type(raw).__name__}"
        )
    raw.pop("provenance", None)  # results/.../spec.yaml carries one; it is a record, not a setting
    raw.setdefault("name", path.stem)
    for item in overrides:
        apply_override(raw, item)
    spec = validate(raw, source=str(path))
    check_overrides_not_searched(spec, overrides)
    return spec


def check_overrides_not_searched(spec: Spec, overrides: list[str]) -> None:
    """A `--set` of a field the search also searches sets the first trial's value (the spec's own
    settings, search.default_trial). Where no such trial runs, each trial's searched value would
    silently replace it: bad input, naming the search entry to change instead."""
    default, why = spec.default_point()
    for item in overrides:
        key = item.partition("=")[0]
        if key.split(".")[0] == "search":
            continue
        for name, param in spec.search.parameters.items():
            path = param_path(name)
            if (path == key or path.startswith(key + ".")) and default is None:
                dist = {k: v for k, v in param.model_dump().items() if v is not None}
                shown = yaml.safe_dump(dist, default_flow_style=True).strip()
                raise InputError(
                    f"--set {key}: {path} is searched (search.parameters.{name}: {shown}) and no "
                    f"trial runs the spec's own settings ({why}), so a fixed value would be "
                    f"ignored; change the search entry instead, e.g. --set "
                    f"'search.parameters.{name}={{choice: [VALUE]}}'")


def apply_override(raw: dict, item: str) -> None:
    """Apply one `--set path.to.key=value`; the value is parsed as YAML (so 1e-3 is a float)."""
    key, sep, text = item.partition("=")
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w.-]+)*", key):
        raise InputError(f"--set {item!r}: expected path.to.key=value, e.g. --set train.lr=0.001")
    try:
        value = parse_yaml(text) if text else ""
    except yaml.YAMLError:
        raise InputError(f"--set {item!r}: value is not valid YAML") from None
    parts = key.split(".")
    if parts[:2] == ["search", "parameters"] and len(parts) > 2:
        # The parameter's own key may hold dots (model.freeze); a trailing distribution name
        # (search.parameters.lr.uniform=[...]) replaces that parameter's distribution.
        rest = parts[2:]
        params = raw.setdefault("search", {}).setdefault("parameters", {})
        if len(rest) > 1 and rest[-1] in Param.model_fields:
            params[".".join(rest[:-1])] = {rest[-1]: value}
        else:
            params[".".join(rest)] = value
        return
    # Walk the schema so that a typo is caught here with the valid names, not as a vague error.
    model: type[BaseModel] | None = Spec
    for i, part in enumerate(parts):
        if model is None:
            break  # inside a free-form mapping such as search.parameters
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "top level"
            near = [f"{name}.{part}" for name, f in fields.items()
                    if isinstance(_unoptional(f.annotation), type)
                    and issubclass(_unoptional(f.annotation), BaseModel)
                    and part in _unoptional(f.annotation).model_fields]
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise InputError(
                f"--set {key}: unknown key {part!r} in {where}; valid keys: {', '.join(fields)}"
                + hint
            )
        ann = _unoptional(fields[part].annotation)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None and i < len(parts) - 1 and not _is_mapping(ann):
            raise InputError(f"--set {key}: {'.'.join(parts[: i + 1])} has no sub-keys")
    try:
        set_path(raw, key, value)
    except KeyError:
        raise InputError(f"--set {key}: {key.rsplit('.', 1)[0]} is not a mapping in the spec") from None


def _unoptional(ann: Any) -> Any:
    """`Compare | None` -> Compare; other annotations unchanged."""
    args = [a for a in getattr(ann, "__args__", ()) if a is not type(None)]
    return args[0] if isinstance(ann, types.UnionType) and len(args) == 1 else ann


def _is_mapping(ann: Any) -> bool:
    return getattr(ann, "__origin__", None) is dict


def validate(raw: dict, source: str = "spec") -> Spec:
    """Validate a raw mapping; every problem is reported in one InputError line."""
    try:
        return Spec.model_validate(raw)
    except ValidationError as e:
        problems = [_describe(err) for err in e.errors()]
        n = len(problems)
        head = f"{source}: {n} problem{'s' if n > 1 else ''}: " if n > 1 else f"{source}: "
        raise InputError(head + "; ".join(problems)) from None


def _describe(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent = _model_at(err["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        msg = f"unknown key; valid keys here: {valid}"
    elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    return f"{loc}: {msg}" if loc else msg


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = Spec
    skip_key = False  # the next part is a user key of a mapping (search.parameters.<key>)
    for part in loc:
        if skip_key:
            skip_key = False
            continue
        field = model.model_fields.get(part)
        ann = _unoptional(field.annotation) if field else None
        if _is_mapping(ann):
            ann, skip_key = ann.__args__[1], True
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def redact(text: str) -> str:
    """`text` with the credentials taken out of every URI in it: user:password before the host,
    and query values that are keys, tokens or passwords (s3://KEY:SECRET@bucket/p?secret_key=S&
    scheme=http is s3://bucket/p?scheme=http). Whatever is printed or written to a run folder goes
    through it; the real URI stays in memory, for Ray. What is left still names the storage, so a
    resume reaches it with credentials from the environment."""
    def clean(match: re.Match) -> str:
        scheme, _, rest = match.group(0).partition("://")
        where, _, query = rest.partition("?")
        # Up to the last '@': a secret with an unescaped '/' would otherwise end the host early.
        where = where.rpartition("@")[2]
        query = "&".join(part for part in query.split("&")
                         if part and not SECRET_QUERY.search(part.split("=", 1)[0]))
        return f"{scheme}://{where}" + (f"?{query}" if query else "")

    return URI.sub(clean, text)


def dump_spec(spec: Spec) -> str:
    """The resolved spec as YAML (paths as strings), for --dry-run and spec.yaml; a storage URI
    without its credentials (redact)."""
    raw = spec.model_dump(mode="json")
    if raw["run"]["storage"]:
        raw["run"]["storage"] = redact(raw["run"]["storage"])
    if raw["compare"] is None:
        del raw["compare"]  # a plain sweep's spec.yaml looks as it always did
    for path in (p for d, fields in DATASET_DEFAULTS.items() if d != spec.data.dataset for p in fields):
        section, _, key = f"data.{path}".rpartition(".")
        parent = get_path(raw, section)
        if parent.get(key) is None:  # the other dataset's fields: unset, so not shown
            parent.pop(key, None)
    params = raw["search"]["parameters"]
    for key, dist in params.items():  # show only the distribution that is set
        params[key] = {k: v for k, v in dist.items() if v is not None}
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)
