"""The layering rules, checked on the source: every import, importlib call and `-m` module string.

    scaling      trains one model: imports none of launch, analysis, experiments, cli
    analysis     fits run directories: never imports launch or cli
    launch       plans and runs sweeps: runs training only as a `python -m scaling train` subprocess
                 (never imports the trainer's modules), never imports analysis or cli
    experiments  configs as data: import only ml_collections and experiments.base
    cli          the composition root (the `scaling` command, the demo): may import all of them
"""
import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("scaling", "launch", "analysis", "experiments", "cli")
# The trainer's modules, which launch may reach only through a `python -m scaling train` subprocess.
TRAINER = ("scaling.train", "scaling.run_record", "scaling.train_cli", "scaling.packed_train",
           "scaling.packed_step", "scaling.packed_cli", "scaling.model", "scaling.optim", "scaling.sharding",
           "scaling.checkpoint", "scaling.distributed")
FORBIDDEN = {  # importing package -> (forbidden module or package, why)
    "scaling": [(p, "scaling trains one model and imports no other package of the project")
                for p in ("launch", "analysis", "experiments", "cli")],
    "analysis": [("launch", "analysis reads run directories, never the runner"),
                 ("cli", "cli is the composition root; nothing imports it")],
    "launch": [("analysis", "launch runs sweeps; reports are composed in cli"),
               ("cli", "cli is the composition root; nothing imports it")]
    + [(m, "launch runs training only as a `python -m scaling train` subprocess") for m in TRAINER],
    "experiments": [(p, "experiments are data: they import only ml_collections and experiments.base")
                    for p in ("scaling", "launch", "analysis", "cli")],
    "cli": [],
}
EXPERIMENT_IMPORTS = ("ml_collections", "experiments.base", "__future__")
IMPORT_CALLS = ("import_module", "__import__", "find_spec", "run_module")
MODULE_RE = re.compile(r"(?:%s)(?:\.\w+)*" % "|".join(PACKAGES))
DOTTED_RE = re.compile(r"(?:%s)(?:\.\w+)+" % "|".join(PACKAGES))  # "launch.cli", not a bare "launch"
# "launch.json" is a file name, not the module launch.json: a bare string ending so is not an edge.
FILE_SUFFIXES = {"json", "jsonl", "py", "md", "txt", "csv", "log", "yaml", "yml", "html", "png", "pdf"}
DASH_M_RE = re.compile(r"(?:^|\s)-m\s+(%s)\b" % MODULE_RE.pattern)


def _module_of(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: pathlib.Path) -> bool:
    p = root.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _docstrings(tree) -> set[int]:
    """ids of the docstring nodes (module, class and function docstrings are prose, not module names)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _call_name(func) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def edges(path: pathlib.Path, root: pathlib.Path):
    """(line, imported module, how) for every import statement and every module string in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_of(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    skip = _docstrings(tree)  # prose, and strings already yielded as an import call's or -m's argument
    for node in ast.walk(tree):  # breadth-first: a call or list comes before the strings inside it
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, "import"
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if _is_module(sub, root) else base, "from-import"
        elif isinstance(node, ast.Call) and _call_name(node.func) in IMPORT_CALLS and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and MODULE_RE.fullmatch(arg.value):
                skip.add(id(arg))
                yield node.lineno, arg.value, f"{_call_name(node.func)}() string"
        elif isinstance(node, (ast.List, ast.Tuple)):
            items = node.elts
            for flag, value in zip(items, items[1:]):
                if (isinstance(flag, ast.Constant) and flag.value == "-m" and isinstance(value, ast.Constant)
                        and isinstance(value.value, str) and MODULE_RE.fullmatch(value.value)):
                    skip.add(id(value))
                    yield value.lineno, value.value, "-m string"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if DOTTED_RE.fullmatch(node.value) and node.value.rpartition(".")[2] not in FILE_SUFFIXES:
                yield node.lineno, node.value, "module-name string"
            for m in DASH_M_RE.finditer(node.value):
                yield node.lineno, m.group(1), "-m in a command string"


def _in(module: str, target: str) -> bool:
    return module == target or module.startswith(target + ".")


def violations(root: pathlib.Path) -> list[str]:
    """Every forbidden edge under root, as 'FILE:LINE: importer -> module (how): why'."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root)
            for line, module, how in edges(path, root):
                if pkg == "experiments" and not any(_in(module, ok) for ok in EXPERIMENT_IMPORTS):
                    found.append(f"{rel}:{line}: experiments -> {module} ({how}): experiments import only "
                                 f"{', '.join(EXPERIMENT_IMPORTS[:2])}")
                    continue
                for target, why in FORBIDDEN[pkg]:
                    if _in(module, target):
                        found.append(f"{rel}:{line}: {pkg} -> {module} ({how}): {why}")
    return found


def test_the_repository_keeps_the_layering_rules():
    assert violations(REPO) == []


def test_the_walker_sees_the_edges_it_must_allow():
    """Not vacuous: the real allowed edges are found (cli's command table, launch's trainer subprocess)."""
    cli_edges = {m for _, m, _ in edges(REPO / "cli" / "main.py", REPO)}
    assert {"launch.cli", "analysis.cli", "cli.demo", "scaling.cli"} <= cli_edges
    assert any(m == "scaling" and how == "-m string"
               for _, m, how in edges(REPO / "launch" / "local.py", REPO))


@pytest.mark.parametrize("source, edge", [
    ("import launch.cli\n", "scaling -> launch.cli (import)"),
    ("from analysis import report\n", "scaling -> analysis.report (from-import)"),
    ("import importlib\nimportlib.import_module('launch.cli')\n", "scaling -> launch.cli (import_module() string)"),
    ("COMMANDS = {'fit': ('analysis.cli', 'fit_main')}\n", "scaling -> analysis.cli (module-name string)"),
    ("import subprocess, sys\nsubprocess.run([sys.executable, '-m', 'launch'])\n",
     "scaling -> launch (-m string)"),
    ("SCRIPT = 'cd x && python -m analysis.cli fit runs'\n", "scaling -> analysis.cli (-m in a command string)"),
])
def test_a_forbidden_edge_is_caught_with_file_and_line(tmp_path, source, edge):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "launch" / "cli.py").write_text("")
    (tmp_path / "analysis" / "report.py").write_text("")
    (tmp_path / "analysis" / "cli.py").write_text("")
    (tmp_path / "scaling" / "bad.py").write_text('"""A docstring naming launch.cli and `python -m launch` is prose."""\n'
                                                  + source)
    found = violations(tmp_path)
    assert len(found) == 1, found
    line = source.count("\n") + 1  # the edge is on the source's last line, after the docstring line
    assert found[0].startswith(f"scaling/bad.py:{line}: {edge}"), found


def test_other_rules_are_caught(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "scaling" / "train.py").write_text("")
    (tmp_path / "launch" / "run.py").write_text("from scaling import train\nfrom scaling import config\n")
    (tmp_path / "analysis" / "x.py").write_text("from . import y\nfrom launch import sweep\n")
    (tmp_path / "experiments" / "e.py").write_text("import ml_collections\nimport math\n"
                                                   "from experiments.base import cloud_lm\n")
    (tmp_path / "cli" / "main.py").write_text("import launch, analysis, scaling.train\n")
    assert sorted(f.split(" (")[0] for f in violations(tmp_path)) == [
        "analysis/x.py:2: analysis -> launch",
        "experiments/e.py:2: experiments -> math",
        "launch/run.py:1: launch -> scaling.train",
    ]


def test_experiments_cite_only_files_in_the_repository():
    """Documents (*.md) and source files (a package path) named in an experiment file (docstring or
    comment) exist; output paths such as runs/x/result.json are not citations."""
    cited_re = re.compile(r"\b(?:(?:%s)/[\w./-]+\.py|[\w./-]+\.md)\b" % "|".join(PACKAGES))
    cited = {}
    for path in sorted((REPO / "experiments").glob("*.py")):
        for name in cited_re.findall(path.read_text()):
            cited[name] = path.name
    assert "experiments/base.py" in cited  # the pattern finds citations (base.py names itself)
    missing = {name: by for name, by in cited.items() if not (REPO / name).exists()}
    assert not missing, f"cited files not in the repository: {missing}"
