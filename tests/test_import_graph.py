"""No import cycles inside tfp_abml, counting the lazy imports inside functions too.

Every module of the package is parsed with ``ast`` (nothing is imported); each ``import`` and
``from ... import`` anywhere in it, at module level or in a function, class or ``if``, is an
edge to the tfp_abml module it names. ``from tfp_abml.data import omniglot`` is an edge to the
submodule ``tfp_abml.data.omniglot`` where that is a module, else to the package
``tfp_abml.data``. The implicit import of a module's parent packages is not counted: a package's
``__init__`` importing its own submodules is how packages work, not a cycle.

The imports point one way, from the command line (``training/``) down to settings
(``run_config``, ``runs``), models (``model``, ``baselines``) and layers; a cycle means some
module reaches back up, and is printed as ``a -> b -> ... -> a``.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = "tfp_abml"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def module_files(root=ROOT):
    """``{module name: path}`` for every ``.py`` file of the package."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(module, path, node, modules):
    """Names of the tfp_abml modules one import statement imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from .x import y, from .. import z
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]


def import_graph(root=ROOT):
    """``{module: set of tfp_abml modules it imports anywhere in its source}``, self-imports left out."""
    modules = module_files(root)
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported(module, path, node, modules):
                    # `import tfp_abml.a.b` names tfp_abml.a.b; keep the longest prefix that is a module
                    while name and name not in modules:
                        name = name.rpartition(".")[0]
                    if name and name != module:
                        edges.add(name)
        graph[module] = edges
    return graph


def components(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def connect(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def cycles(graph):
    """One shortest cycle per strongly connected component, from its first module: ``[a, b, ..., a]``."""
    return [_cycle_through(graph, component) for component in components(graph)]


def _cycle_through(graph, component):
    """A shortest cycle from the component's first module back to itself, inside the component."""
    start, members = component[0], set(component)
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for other in sorted(graph[node] & members):
                if other == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if other not in previous:
                    previous[other] = node
                    following.append(other)
        frontier = following
    return component


def test_the_scan_sees_lazy_imports_and_submodules():
    """Guards the test below against passing because it sees nothing."""
    graph = import_graph()
    assert len(graph) > 30 and "tfp_abml.data.tfds_builders.omniglot_local" in graph
    # `from tfp_abml import baselines` inside RunConfig.build_model: the subpackage
    assert "tfp_abml.baselines" in graph["tfp_abml.run_config"]
    # `from tfp_abml.data.tfds_builders import omniglot_local` inside a function: the submodule
    assert "tfp_abml.data.tfds_builders.omniglot_local" in graph["tfp_abml.data.omniglot"]
    # `from tfp_abml.data import episode_dataset`: a name of the package, so the package
    assert "tfp_abml.data" in graph["tfp_abml.evaluation"]


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    found = components(graph)
    assert not found, "import cycles in tfp_abml (lazy imports included):\n" + "\n".join(
        f"{' -> '.join(_cycle_through(graph, component))}  (all that import each other: {', '.join(component)})"
        for component in found)


def test_choices_is_a_leaf():
    """The names of choices are checkable without TensorFlow and import nothing of tfp_abml but its errors."""
    graph = import_graph()
    assert graph["tfp_abml.choices"] <= {"tfp_abml.errors"}
    tree = ast.parse((ROOT / "choices.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert not imported & {"tensorflow", "keras", "tensorflow_probability", "tensorflow_datasets", "numpy"}
