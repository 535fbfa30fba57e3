"""segpipe's own errors share one base, and the CLI prints them as messages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import segpipe
from segpipe.cli import main
from segpipe.core.errors import SegpipeError

PACKAGE = Path(segpipe.__file__).parent


def _error_classes() -> dict[str, list[str]]:
    """Every exception class segpipe defines, with the names of its bases."""
    found: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception")) or b in ("SegpipeError",) for b in bases) \
                        or node.name.endswith("Error"):
                    found[f"{path.relative_to(PACKAGE)}:{node.name}"] = bases
    return found


def test_every_error_class_derives_from_the_one_base():
    classes = _error_classes()
    assert len(classes) >= 10  # the check sees them
    stray = [name for name, bases in classes.items()
             if not name.endswith(":SegpipeError") and "SegpipeError" not in bases
             and not any(b in {n.split(":")[1] for n in classes} for b in bases)]
    assert stray == []


def test_the_cli_prints_segpipe_errors_as_messages_even_when_verbose(tmp_path, capsys):
    missing = tmp_path / "no-such-destination"
    assert main(["-v", "export", str(missing), "--format", "labelstudio",
                 "--out", str(tmp_path / "tasks.json")]) == 1
    err = capsys.readouterr().err
    assert "NothingCommitted" in err and str(missing) in err and "Traceback" not in err


def test_an_unexpected_error_keeps_its_traceback_under_verbose(monkeypatch):
    import segpipe.cli as cli

    def broken(args):
        raise KeyError("a defect")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    status = next(a for a in parser._subparsers._group_actions[0].choices.values()
                  if a.prog.endswith("status"))
    status.set_defaults(func=broken)
    with pytest.raises(KeyError):
        main(["-v", "status", "x"])
    assert main(["status", "x"]) == 1


def test_the_base_keeps_the_builtin_bases_callers_catch():
    from segpipe.destination.runs import DestinationMismatch
    from segpipe.sources.base import SourceConfigError

    assert issubclass(DestinationMismatch, RuntimeError) and issubclass(DestinationMismatch, SegpipeError)
    assert issubclass(SourceConfigError, ValueError) and issubclass(SourceConfigError, SegpipeError)
