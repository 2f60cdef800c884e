"""The package's shape: a one-way stack of layers, no import cycles, ``import npconv.nn`` pulls in only NumPy."""

import ast
import os
import subprocess
import sys

import npconv

PACKAGE = os.path.dirname(npconv.__file__)
# Each subpackage's level: a module may import only from its own level or below.
LEVELS = {
    "npconv.backend": 0, "npconv.errors": 0, "npconv.text": 0,
    "npconv.nn": 1, "npconv.optim": 1, "npconv.data": 1, "npconv.io": 1, "npconv.plots": 1,
    "npconv.models": 2, "npconv.engine": 2,  # the engine runs nn layers fast; nn knows nothing of it
    "npconv.train": 3,
    "npconv.inference": 4,
    "npconv.experiments": 5, "npconv.onnx": 5,
    "npconv.cli": 6, "npconv.__main__": 6, "npconv.serve": 6,
}


def modules():
    """``{dotted name: path}`` of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = "npconv." + os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imports(name, path, known):
    """The package's modules that module ``name`` imports, anywhere in its code (functions too)."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:  # "from . import nn" imports the module npconv.nn, not npconv itself
                submodule = f"{base}.{alias.name}"
                out.add(submodule if submodule in known else base)
    return {m for m in out if m in known and m != name}


def level(name):
    matches = [prefix for prefix in LEVELS if name == prefix or name.startswith(prefix + ".")]
    return LEVELS[max(matches, key=len)] if matches else None


def test_no_import_cycles():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_import_points_down_the_stack():
    known = modules()
    upward = []
    for name, path in known.items():
        mine = level(name)
        if mine is None:
            continue
        for dep in imports(name, path, known):
            theirs = level(dep)
            if theirs is not None and theirs > mine:
                upward.append(f"{name} (level {mine}) imports {dep} (level {theirs})")
    assert not upward, "imports that point up the stack:\n" + "\n".join(sorted(upward))


def test_the_textbook_imports_nothing_of_the_engine():
    """npconv.nn is read on its own: no module of it names the engine (the level check allows no upward import;
    this says it for the one that matters most)."""
    known = modules()
    into_engine = [f"{name} imports {dep}" for name, path in known.items() if name.startswith("npconv.nn")
                   for dep in imports(name, path, known) if dep.startswith("npconv.engine")]
    assert not into_engine, "\n".join(into_engine)


def test_every_module_has_a_level():
    missing = [name for name in modules() if name != "npconv" and level(name) is None]
    assert not missing, f"modules outside the documented layers: {missing}"


def test_importing_the_layers_pulls_in_nothing_above_them():
    code = ("import sys, npconv.nn, npconv.optim; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('npconv', 'threadpoolctl', 'matplotlib', 'tqdm', 'PIL', 'dask', 'distributed'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    outside = [m for m in loaded if not m.startswith(("npconv.nn", "npconv.optim"))
               and m not in ("npconv", "npconv.backend", "npconv.errors")]
    assert not outside, f"import npconv.nn / npconv.optim also loaded: {outside}"


def test_nothing_outside_nn_imports_its_private_modules():
    """``npconv.nn``'s helpers behind an underscore are its own: other layers use what ``nn`` makes public."""
    known = modules()
    # Moved out of train/ by the engine work of issue 20, which takes its imports with it.
    pending = set()
    private = [f"{name} imports {dep}" for name, path in known.items()
               if not name.startswith("npconv.nn") and name not in pending
               for dep in imports(name, path, known) if dep.startswith("npconv.nn._")]
    assert not private, "private modules of npconv.nn imported from outside it:\n" + "\n".join(sorted(private))
