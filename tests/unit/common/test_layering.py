"""The package rules, read from the source's imports: the control domain does no I/O, servicers
leave every privilege decision to core (so a second transport cannot skip one), lower layers
never import the transport, and no module-level import cycle exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ROOT / "services"

# What the control domain may import besides itself: pure standard library and the shared
# vocabulary (errors, chat and row formatting, the job spec, the base-model spec type, the
# bounds of a response_format's choices).
PURE_STDLIB = {"__future__", "abc", "base64", "collections", "dataclasses", "datetime", "enum",
               "functools", "hashlib", "itertools", "json", "math", "random", "re", "string",
               "typing", "uuid"}
DOMAIN_MAY_USE = {"services.common.errors", "services.common.chat_format",
                  "services.common.base_models", "services.common.formatting",
                  "services.common.job_spec", "services.common.choices"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for the imports that run when the module loads: at top level,
    outside `if TYPE_CHECKING:` and function bodies."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Try):   # optional imports
            for inner in node.body:
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                    found.append((inner.module, [alias.name for alias in inner.names]))
    return found


def sources(package: str) -> list[Path]:
    return sorted((SERVICES / package).rglob("*.py"))


def test_the_control_domain_imports_nothing_that_does_io():
    offending = []
    for path in sources("control/domain"):
        for module, _ in top_level_imports(path):
            if module.split(".")[0] in PURE_STDLIB or module in DOMAIN_MAY_USE or \
                    module.startswith("services.control.domain"):
                continue
            offending.append(f"{module_name(path)} imports {module}")
    assert not offending, "\n".join(offending)


PRIVILEGE_DECISIONS = {"authorize", "require", "allows", "can_read_database", "can_read_schema",
                       "owner_role"}


def test_servicers_leave_privilege_decisions_to_core():
    """api/ neither holds the authorizer nor decides on an Access: core checks privileges, for
    every door (gRPC, the OpenAI-compatible HTTP API that calls it, SQL functions)."""
    offending = []
    for path in sources("control/api"):
        for module, names in top_level_imports(path):
            if module == "services.control.core.authorization":
                offending.append(f"{module_name(path)} imports {names} from {module}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in PRIVILEGE_DECISIONS:
                offending.append(f"{module_name(path)}:{node.lineno} calls .{node.func.attr}()")
    assert not offending, "\n".join(offending)


@pytest.mark.parametrize("layer", ["core", "domain", "store", "data", "dispatch"])
def test_lower_layers_never_import_the_transport(layer):
    offending = [f"{module_name(path)} imports {module}"
                 for path in sources(f"control/{layer}")
                 for module, _ in top_level_imports(path)
                 if module.startswith(("services.control.api", "services.control.app"))]
    assert not offending, "\n".join(offending)


def test_no_module_level_import_cycle():
    graph: dict[str, set[str]] = {}
    for path in sorted(SERVICES.rglob("*.py")):
        name = module_name(path)
        graph[name] = set()
        for module, names in top_level_imports(path):
            if not module.startswith("services"):
                continue
            # `from package import module` imports the submodule
            targets = [f"{module}.{n}" for n in names] + [module]
            graph[name] |= set(targets)
    graph = {name: {t for t in targets if t in graph and t != name}
             for name, targets in graph.items()}

    cycles: list[list[str]] = []
    state: dict[str, int] = {}   # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package's __init__ importing its own submodules is not a cycle through code
    real = [c for c in cycles
            if not any(b.startswith(a + ".") for a, b in zip(c, c[1:], strict=False))]
    assert not real, "\n".join(" -> ".join(c) for c in real)
