"""DVC stage `check`: validate every stage of this pipeline before DVC deletes any output.

DVC deletes a stage's outputs before it runs the stage, so a stage that fails on a params
typo has already lost its previous results. Every stage of selectkit's pipelines depends on
this stage's marker file, and this stage depends on the whole params file, the stage scripts and the
code: on any change of these it runs first and, for each stage of the pipeline (matrix items
expanded by DVC itself), parses the stage's command line with the stage script's own parser
and calls its ``validate``: params sections, paths, patterns and writable outputs, no work.
It also resolves every params key a stage declares (DVC would stop at that stage, after the
stages before it ran), then checks the tracking server is reachable. Every problem is printed, grouped by the
stages it affects; nothing is deleted or written unless all pass. The marker's content never
changes, so a rerun of this stage alone reruns nothing downstream.

Run it by hand too: ``python stages/check.py`` (root) or from a pipeline's folder.
"""

import argparse
import importlib.util
import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from selectkit.cli import run_stage
from selectkit.validation import ConfigError, UsageError

MARKER = "selectkit check passed: every stage's params, paths and outputs were valid\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="dvc.yaml", help="the dvc.yaml whose stages to check")
    ap.add_argument("--params", default="params.yaml", help="the pipeline's params (for the tracking check)")
    ap.add_argument("--out", default=None, help="marker file written when every check passes")
    return ap


def pipeline_commands(dvcfile: Path) -> List[Tuple[str, str, Path]]:
    """(stage name, command, working directory) of every stage in ``dvcfile``, matrix and
    foreach items expanded and ``${...}`` interpolated by DVC."""
    from dvc.repo import Repo

    dvcfile = dvcfile.resolve()
    repo = Repo(str(dvcfile.parent))
    try:
        stages = repo.stage.load_file(str(dvcfile))
        return [(s.addressing.split(":")[-1], s.cmd, Path(s.wdir)) for s in stages if getattr(s, "cmd", None)]
    finally:
        repo.close()


def missing_params(dvcfile: Path) -> List[Tuple[str, str]]:
    """(stage name, problem) for every params key a stage of ``dvcfile`` declares that its
    params file lacks (DVC reads each dot as a level of nesting)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    from selectkit.validation import load_params

    dvcfile = dvcfile.resolve()
    repo = Repo(str(dvcfile.parent))
    out: List[Tuple[str, str]] = []
    loaded: Dict[str, object] = {}
    try:
        for stage in repo.stage.load_file(str(dvcfile)):
            for dep in stage.deps:
                if not isinstance(dep, ParamsDependency) or not Path(dep.fs_path).is_file():
                    continue
                params = loaded.setdefault(dep.fs_path, load_params(dep.fs_path))
                for key in dep.params or []:
                    node = params
                    for part in key.split("."):
                        node = node.get(part) if isinstance(node, dict) else None
                    if node is None and not _has_key(params, key):
                        hint = (" (DVC reads each dot as a level of nesting, so a name holding a dot, such as "
                                "'svp-0.5', cannot be a params key: rename it)"
                                if any("." in k for k in _keys(params)) else "")
                        out.append((stage.addressing.split(":")[-1],
                                    f"params key {key!r} is not in {dep.def_path}{hint}"))
    finally:
        repo.close()
    return out


def _keys(params):
    for k, v in (params.items() if isinstance(params, dict) else ()):
        yield str(k)
        yield from _keys(v)


def _has_key(params, key: str) -> bool:
    """Whether the dotted ``key`` names an entry (one holding null included)."""
    node = params
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, dict) and parts[-1] in node


def _stage_module(script: Path):
    spec = importlib.util.spec_from_file_location(f"selectkit_stage_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOT_CHECKED = "not checked"


def check_command(cmd: str, wdir: Path, modules: Dict[Path, object]) -> Optional[str]:
    """Validate one stage command; returns the problem, ``NOT_CHECKED`` for a command that is
    not ``python <a stage script with parser() and validate()> ...``, or None when it passes."""
    argv = shlex.split(cmd)
    if len(argv) < 2 or not Path(argv[0]).name.startswith("python") or not argv[1].endswith(".py"):
        return NOT_CHECKED
    script = (wdir / argv[1]).resolve()
    if not script.is_file():
        return f"{argv[1]} not found (from {wdir})"
    if script not in modules:
        try:
            modules[script] = _stage_module(script)
        except Exception as e:  # noqa: BLE001 - any import failure is this stage's problem
            return f"{argv[1]} does not import: {type(e).__name__}: {e}"
    module = modules[script]
    if not hasattr(module, "validate") or not hasattr(module, "parser"):
        return NOT_CHECKED
    cwd = os.getcwd()
    os.chdir(wdir)  # the command's paths are relative to its stage's wdir
    try:
        try:
            args = module.parser().parse_args(argv[2:])
        except SystemExit:
            return f"its command line does not parse: {' '.join(argv[2:])}"
        module.validate(args)
    except (ConfigError, UsageError, FileNotFoundError, ValueError) as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - one stage's unexpected failure must not hide the others'
        return f"its validation failed unexpectedly: {type(e).__name__}: {e}"
    finally:
        os.chdir(cwd)
    return None


def main(argv: Optional[List[str]] = None) -> None:
    from selectkit.config import TrackingConfig, load_section
    from selectkit.io import atomic_write_text
    from selectkit.preflight import check_tracking

    args = parser().parse_args(argv)
    dvcfile = Path(args.pipeline)
    if not dvcfile.is_file():
        raise UsageError(f"--pipeline {dvcfile} not found: run from the folder holding the pipeline's dvc.yaml")
    problems: Dict[str, List[str]] = {}
    modules: Dict[Path, object] = {}
    unchecked: List[str] = []
    commands = [c for c in pipeline_commands(dvcfile) if "check.py" not in c[1]]  # not this stage itself
    for name, cmd, wdir in commands:
        problem = check_command(cmd, wdir, modules)
        if problem == NOT_CHECKED:
            unchecked.append(name)
        elif problem is not None:
            problems.setdefault(problem, []).append(name)
    for name, problem in missing_params(dvcfile):
        problems.setdefault(problem, []).append(name)
    try:
        check_tracking(load_section(args.params, "tracking", TrackingConfig))
    except (ConfigError, UsageError) as e:
        problems.setdefault(str(e), []).append("every stage (tracking)")
    if problems:
        lines = [f"{len(problems)} problem(s) in {dvcfile} / {args.params}; nothing was run or deleted:"]
        for problem, names in problems.items():
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            lines.append(f"  - {shown}: {problem}")
        raise ConfigError("\n".join(lines))
    print(f"checked {len(commands) - len(unchecked)} stages of {dvcfile}: params, paths and outputs are valid"
          + (f"; not checked (not a selectkit stage script): {', '.join(unchecked)}" if unchecked else ""),
          file=sys.stderr)
    if args.out:
        atomic_write_text(args.out, MARKER)


if __name__ == "__main__":
    run_stage(main)
