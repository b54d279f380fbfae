"""The library's layers import only downward, from the module source alone (no import is run).

Layer of a module = the layer of its sub-package of ``jaxdiff``. A module may import modules of its
own sub-package (the graph of those must have no cycle) and of strictly lower layers; it may not
import ``jaxdiff`` itself (the public API sits on top), ``configs`` or ``main`` (the command line
sits on top of the library), and it may not import jaxdiff inside a function (the way to dodge a
cycle).
"""

import ast
import os
import sys

import pytest

from tests.conftest import ROOT

LAYERS = {"common": 0, "core": 1, "models": 2, "data": 2, "training": 3, "evaluation": 3, "interop": 3,
          "drivers": 4}
PACKAGE = os.path.join(ROOT, "jaxdiff")


def library_modules() -> dict:
    """``{dotted module name: path}`` of every module of the jaxdiff package."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                modules[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    return modules


def imported_names(tree: ast.AST):
    """``(name, lineno, at_module_level)`` for every import in ``tree`` (``from a import b`` gives
    ``a.b``, which is either the module ``a.b`` or a name defined in ``a``)."""
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno, id(node) in top


def resolve(name: str, modules: dict) -> str | None:
    """The jaxdiff module ``name`` refers to (longest existing prefix), or None for other packages."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in modules:
            return candidate
    return None


def layer_of(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # jaxdiff/__init__.py: the public API, above every layer
    return parts[1], LAYERS[parts[1]]


MODULES = library_modules()
GRAPH = {}
for _module, _path in MODULES.items():
    with open(_path) as _f:
        GRAPH[_module] = list(imported_names(ast.parse(_f.read(), _path)))


def test_every_subpackage_has_a_layer():
    subpackages = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert subpackages == set(LAYERS), subpackages ^ set(LAYERS)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "jaxdiff"))
def test_imports_go_only_downward(module):
    package, layer = layer_of(module)
    for name, line, top in GRAPH[module]:
        root = name.split(".")[0]
        assert root not in ("configs", "main"), f"{module}:{line} imports {name}: the library never imports the CLI"
        target = resolve(name, MODULES)
        if root != "jaxdiff":
            continue
        assert top, f"{module}:{line} imports {name} inside a function"
        assert target not in (None, "jaxdiff"), f"{module}:{line} imports the top-level jaxdiff API ({name})"
        target_package, target_layer = layer_of(target)
        assert target_package == package or target_layer < layer, (
            f"{module}:{line} (layer {package}={layer}) imports {target} (layer {target_package}={target_layer})")


def test_no_cycle_inside_a_subpackage():
    edges = {m: {resolve(n, MODULES) for n, _, _ in GRAPH[m]} - {None, m} for m in MODULES}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for t in edges[m]:
            if t == "jaxdiff" or (t.startswith(m + ".") and m.count(".") == 1):
                continue  # a package's __init__ importing its own modules
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state and m != "jaxdiff":
            visit(m, [])


def test_the_checker_catches_violations():
    """The rules above would fail on an upward import, a function-level import and the CLI."""
    bad = ast.parse("from jaxdiff.drivers import train_loop\n"
                    "def f():\n    from jaxdiff.core import schedules\n"
                    "import configs.default\n")
    names = list(imported_names(bad))
    assert names[0] == ("jaxdiff.drivers.train_loop", 1, True)
    assert ("jaxdiff.core.schedules", 3, False) in names and ("configs.default", 4, True) in names
    assert layer_of(resolve("jaxdiff.drivers.train_loop", MODULES)) == ("drivers", 4)
    assert layer_of(resolve("jaxdiff.core.sampler_registry.make_sampler", MODULES)) == ("core", 1)


PYTORCH_SIDE = ("torch", "torchvision", "diffusers", "pytorch_fid")  # bench/ and test fixtures only


def test_the_library_never_imports_pytorch():
    """Neither torch nor diffusers is a dependency: .pth and .bin files are read by common.torch_pickle."""
    for module in MODULES:
        for name, line, _ in GRAPH[module]:
            assert name.split(".")[0] not in PYTORCH_SIDE, f"{module}:{line} imports {name}"


# The file readers that take bytes from anyone, and the two modules they share: NumPy and the standard
# library only (no JAX, no third-party parser), so what runs on an untrusted file is small and known.
FILE_READERS = ("jaxdiff.common.torch_pickle", "jaxdiff.common.restricted_pickle", "jaxdiff.common.array_files",
                "jaxdiff.common.errors")


def test_the_file_readers_need_only_numpy_and_the_standard_library():
    for module in FILE_READERS:
        for name, line, _ in GRAPH[module]:
            root = name.split(".")[0]
            inside = any(name == m or name.startswith(m + ".") for m in FILE_READERS)
            assert root in sys.stdlib_module_names or root == "numpy" or inside, f"{module}:{line} imports {name}"
