"""The library's data flow runs one way (DESIGN §2, CONTRIBUTING's module map): every module imports, every
import goes to a module of a lower layer, and no module outside the dataset definitions tests a dataset's name."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "medcnn_nb"

# The module map, bottom up: a module may import only modules of lower layers (never its own layer).
LAYERS = [
    ["config", "basics"],
    ["data.core"],
    ["data.lidc", "data.brats"],
    ["data.phantom_lidc", "data.phantom_brats"],
    ["data.msd"],
    ["preprocess"],
    ["splits", "augment"],
    ["loader"],
    ["models", "losses"],
    ["metrics", "transfer"],
    ["datasets"],
    ["variants"],
    ["train"],
    ["experiments"],
    ["report"],
    ["paper"],
]
LAYER = {m: i for i, names in enumerate(LAYERS) for m in names}


def modules() -> list[str]:
    return sorted(p.relative_to(PKG).with_suffix("").as_posix().replace("/", ".") for p in PKG.rglob("*.py")
                  if p.name not in ("__init__.py", "_modidx.py"))


def imports_of(module: str) -> set[str]:
    "The medcnn_nb modules that `module` imports, anywhere in the file (functions included)."
    path = PKG / (module.replace(".", "/") + ".py")
    package = module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from ..x import y
                base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "medcnn_nb": base = node.module.split(".")[1:]
            else: continue
            for alias in node.names:  # `from medcnn_nb import metrics` imports a module, `from .x import f` a name
                candidate = ".".join(base + [alias.name])
                out.add(candidate if candidate in LAYER else ".".join(base))
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("medcnn_nb.")}
    return {m for m in out if m}


def test_every_module_is_on_the_map():
    assert sorted(LAYER) == modules()


@pytest.mark.parametrize("module", modules())
def test_module_imports(module):
    importlib.import_module(f"medcnn_nb.{module}")


def test_imports_run_down_the_layers():
    graph = {m: sorted(imports_of(m)) for m in modules()}
    assert graph["datasets"] and graph["paper"]  # the parser sees imports at all
    upward = [(m, d) for m, deps in graph.items() for d in deps if LAYER[d] >= LAYER[m]]
    assert upward == [], f"imports that do not go down the module map: {upward}"


def test_imports_are_at_the_top():
    "Library imports at module level (only optional backends and notebook tooling may be imported in a function)."
    late = []
    for m in modules():
        tree = ast.parse((PKG / (m.replace(".", "/") + ".py")).read_text())
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("medcnn_nb")):
                    late.append((m, fn.name, node.module))
    assert late == []


def test_no_module_outside_the_definitions_tests_a_dataset_name():
    from medcnn_nb.datasets import DATASETS
    names = set(DATASETS)
    found = []
    for m in modules():
        if m == "datasets" or m.startswith("data."): continue  # the definitions and the readers know their dataset
        for node in ast.walk(ast.parse((PKG / (m.replace(".", "/") + ".py")).read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in (node.left, *node.comparators) if isinstance(c, ast.Constant)]
                if names & {c for c in consts if isinstance(c, str)}: found.append((m, node.lineno))
    assert found == []
