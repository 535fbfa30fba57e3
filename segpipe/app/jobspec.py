"""YAML job specs: a named list of steps (annotate, export) that maps onto JobConfig.

A spec is either a list of steps, run in order::

    name: bootstrap                  # optional; default: the file's stem
    description: free text           # optional
    steps:
      - annotate: {src: "${SEGPIPE_SRC}", dst: "${SEGPIPE_DST}", model: builtin:demo}
      - export: {format: labelstudio, out: "${SEGPIPE_DST}/review/labelstudio.json"}

or, for one annotate job, the short form ``annotate: {...}`` in place of ``steps:``.

- ``annotate`` takes JobConfig's fields, with the same names; ``src`` and ``dst`` are required.
  An unknown field is refused, naming the field and the file.
- ``export`` takes ``format`` (one of ``segpipe.formats.exports.EXPORT_FORMATS``), ``out``,
  an optional ``dst`` (default: the dst of the annotate step before it) and further options for
  ``segpipe.tools.export.run_export``.
- String values may name environment variables as ``${VAR}`` or ``${VAR:-default}``, so that
  buckets and dates come from the environment; an unset or empty variable without a default is
  an error. Numbers and booleans may come from variables too: values are converted to the
  field's type.
- Secrets never belong in a spec: credentials come from the standard AWS environment or the
  pod's role, and a ``storage_options`` key that names a secret must hold a ``${VAR}``.
- Command-line flags (``segpipe run SPEC --batch-size 4``) override the fields of every annotate
  step; ``--src`` and ``--dst`` only where the spec has a single annotate step.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Union

import yaml

from segpipe.core.config import JobConfig
from segpipe.core.errors import SegpipeError
from segpipe.formats.exports import EXPORT_FORMATS

log = logging.getLogger(__name__)

SPEC_KEYS = ("name", "description", "steps", "annotate")
STEP_KINDS = ("annotate", "export")

_JOB_FIELDS = {f.name: typing.get_type_hints(JobConfig)[f.name] for f in dataclasses.fields(JobConfig)}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}$]*))?\}")
_WHOLE_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
# fsspec/s3fs option names that carry secrets: key, secret, token, password, *_access_key...
_SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|(^|_)key$", re.IGNORECASE)
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}


class SpecError(SegpipeError, ValueError):
    """A job spec that can't run as written; the message names the file and the field."""


class StepFailed(SegpipeError, RuntimeError):
    """A step of a spec failed; the message names the spec and the step."""


@dataclass(frozen=True)
class AnnotateStep:
    config: JobConfig


@dataclass(frozen=True)
class ExportStep:
    format: str
    out: str
    dst: str | None = None  # None: the dst of the annotate step before this one
    options: Mapping[str, Any] = field(default_factory=dict)


Step = AnnotateStep | ExportStep


@dataclass(frozen=True)
class JobSpec:
    name: str
    steps: tuple[Step, ...]
    source: str  # the file or URL it was read from, for messages


def load_spec(path_or_url: str, *, env: Mapping[str, str] | None = None) -> JobSpec:
    """Read and validate a spec from a local path or any fsspec URL; `env` defaults to
    the process environment."""
    from segpipe.io.storage import read_url

    text = read_url(str(path_or_url)).decode("utf-8")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        raise SpecError(f"{path_or_url}: not valid YAML: {exc}") from exc
    return parse_spec(data, source=str(path_or_url), env=os.environ if env is None else env)


def parse_spec(data: Any, *, source: str, env: Mapping[str, str]) -> JobSpec:
    """Validate parsed YAML into a JobSpec; every error names `source`."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job spec is a mapping with `steps:` or `annotate:`")
    _refuse_unknown(data, SPEC_KEYS, f"{source}: unknown top-level key")
    if ("steps" in data) == ("annotate" in data):
        raise SpecError(f"{source}: give exactly one of `steps:` (a list of steps) or "
                        "`annotate:` (a single annotate job)")
    raw_steps = data["steps"] if "steps" in data else [{"annotate": data["annotate"]}]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise SpecError(f"{source}: `steps:` must be a non-empty list")
    steps: list[Step] = []
    for number, item in enumerate(raw_steps, 1):
        if not isinstance(item, dict) or len(item) != 1:
            raise SpecError(f"{source}: step {number}: a step is a mapping with one key, "
                            f"one of {', '.join(STEP_KINDS)}")
        ((kind, body),) = item.items()
        where = f"{source}: step {number} ({kind})"
        if kind == "annotate":
            steps.append(_annotate_step(body, where, env))
        elif kind == "export":
            has_annotate = any(isinstance(s, AnnotateStep) for s in steps)
            steps.append(_export_step(body, where, env, has_annotate))
        else:
            _refuse_unknown({kind: None}, STEP_KINDS, f"{source}: step {number}: unknown step kind")
    name = data.get("name", PurePosixPath(source).stem)
    if not isinstance(name, str) or not name:
        raise SpecError(f"{source}: `name:` must be a non-empty string")
    return JobSpec(name=name, steps=tuple(steps), source=source)


def with_overrides(spec: JobSpec, overrides: Mapping[str, Any]) -> JobSpec:
    """The spec with command-line values in place of its annotate fields."""
    if not overrides:
        return spec
    _refuse_unknown(overrides, tuple(_JOB_FIELDS), f"{spec.source}: unknown override")
    values = {name: _coerce(name, value, f"{spec.source}: --{name.replace('_', '-')}")
              for name, value in overrides.items()}
    annotates = [s for s in spec.steps if isinstance(s, AnnotateStep)]
    if not annotates:
        raise SpecError(f"{spec.source}: has no annotate step for "
                        f"{', '.join(_flag(n) for n in sorted(values))} to override")
    placed = sorted({"src", "dst"} & values.keys())
    if placed and len(annotates) > 1:
        raise SpecError(f"{spec.source}: {' and '.join(_flag(n) for n in placed)} can't override "
                        f"a spec with {len(annotates)} annotate steps; edit the spec instead")
    try:
        steps = tuple(dataclasses.replace(s, config=s.config.replace(**values))
                      if isinstance(s, AnnotateStep) else s for s in spec.steps)
    except ValueError as exc:
        raise SpecError(f"{spec.source}: {exc}") from exc
    return dataclasses.replace(spec, steps=steps)


def run_spec(spec: JobSpec, overrides: Mapping[str, Any] | None = None) -> int:
    """Run the steps in order, each to the end before the next; returns 0 or raises
    StepFailed naming the step."""
    spec = with_overrides(spec, overrides or {})
    last_dst: str | None = None
    for number, step in enumerate(spec.steps, 1):
        label = f"{spec.name} step {number}/{len(spec.steps)}"
        kind = "annotate" if isinstance(step, AnnotateStep) else "export"
        try:
            if isinstance(step, AnnotateStep):
                last_dst = step.config.dst
                print(f"{label} annotate: {step.config.src} -> {step.config.dst}", flush=True)
                print(f"{label} annotate: {_describe_run(_annotate(step.config))}", flush=True)
            else:
                dst = step.dst or last_dst
                assert dst is not None, "parsing refuses an export with no dst and no annotate before"
                print(f"{label} export {step.format}: {dst} -> {step.out}", flush=True)
                from segpipe.tools.export import run_export

                run_export(dst, format=step.format, out=step.out, **step.options)
        except Exception as exc:
            raise StepFailed(f"{spec.name}: step {number} ({kind}) failed: {exc}") from exc
    return 0


def _annotate(config: JobConfig) -> dict[str, Any]:
    from segpipe.app.annotate import (
        annotate,  # torch, transformers and Ray load only when a step runs
    )

    return annotate(config)


def _describe_run(summary: dict[str, Any]) -> str:
    return (f"run {summary['run_id']}: {summary['images']} images, {summary['annotated']} "
            f"annotated, {summary['errors']} errors, {summary['segments']} segments")


def _annotate_step(body: Any, where: str, env: Mapping[str, str]) -> AnnotateStep:
    if not isinstance(body, dict):
        raise SpecError(f"{where}: expected a mapping of job config fields")
    _refuse_unknown(body, tuple(_JOB_FIELDS), f"{where}: unknown field")
    _refuse_literal_secrets(body.get("storage_options"), f"{where}: storage_options")
    missing = [name for name in ("src", "dst") if name not in body]
    if missing:
        raise SpecError(f"{where}: missing field {', '.join(map(repr, missing))}")
    values = {name: _coerce(name, _expand(value, env, f"{where}: {name}"), f"{where}: {name}")
              for name, value in body.items()}
    try:
        return AnnotateStep(JobConfig.from_dict(values))
    except ValueError as exc:
        raise SpecError(f"{where}: {exc}") from exc


def _export_step(body: Any, where: str, env: Mapping[str, str], has_annotate: bool) -> ExportStep:
    if not isinstance(body, dict):
        raise SpecError(f"{where}: expected a mapping with format, out and options")
    _refuse_literal_secrets(body.get("storage_options"), f"{where}: storage_options")
    values = _expand(body, env, where)
    fmt, out, dst = values.pop("format", None), values.pop("out", None), values.pop("dst", None)
    if fmt not in EXPORT_FORMATS:
        raise SpecError(f"{where}: format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if not isinstance(out, str) or not out:
        raise SpecError(f"{where}: `out:` (where the export is written) is required")
    if dst is None and not has_annotate:
        raise SpecError(f"{where}: `dst:` is required when no annotate step comes before it")
    if dst is not None and not isinstance(dst, str):
        raise SpecError(f"{where}: `dst:` must be a string")
    _check_export_options(values, where)
    return ExportStep(format=fmt, out=out, dst=dst, options=values)


def _check_export_options(options: Mapping[str, Any], where: str) -> None:
    """Refuse misspelled export options at load time, not after hours of annotation."""
    try:
        from segpipe.tools.export import run_export
    except ImportError:
        return  # the step itself reports it when it runs
    params = inspect.signature(run_export).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY]
    _refuse_unknown(options, tuple(n for n in named if n not in ("dst", "format", "out")),
                    f"{where}: unknown export option")


def _expand(value: Any, env: Mapping[str, str], where: str) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string inside `value`."""
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        raise SpecError(f"{where}: environment variable {name} is not set (or is empty)")

    expanded = _ENV_REF.sub(substitute, value)
    if "${" in _ENV_REF.sub("", value):
        raise SpecError(f"{where}: malformed variable reference in {value!r}; "
                        "write ${NAME} or ${NAME:-default}")
    return expanded


def _coerce(name: str, value: Any, where: str) -> Any:
    """`value` as JobConfig's type for field `name`; strings convert, so that numbers and
    booleans can come from environment variables."""
    hint = _JOB_FIELDS[name]
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    base = next(t for t in options if t is not type(None))
    kind = typing.get_origin(base) or base
    if value is None:
        if type(None) in options:
            return None
        raise SpecError(f"{where}: needs a value")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(value, kind):
        return value
    wanted = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
              dict: "a mapping"}.get(kind, kind.__name__)
    raise SpecError(f"{where}: must be {wanted}, not {value!r}")


def _refuse_literal_secrets(options: Any, where: str) -> None:
    """A storage option that names a secret must come from the environment as ${VAR}."""
    if not isinstance(options, dict):
        return
    for key, value in options.items():
        if isinstance(value, dict):
            _refuse_literal_secrets(value, f"{where}.{key}")
        elif _SECRET_NAME.search(str(key)) and value is not None and not (
                isinstance(value, str) and _WHOLE_ENV_REF.fullmatch(value)):
            raise SpecError(f"{where}.{key}: secrets don't belong in a job spec; use the standard "
                            "AWS environment or the pod's role, or write ${VARIABLE}")


def _refuse_unknown(given: Mapping[str, Any], known: tuple[str, ...], what: str) -> None:
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"{what} {name!r}{hint}")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice, which plain YAML silently resolves to the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
