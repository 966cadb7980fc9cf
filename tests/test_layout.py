"""The package's shape holds: roles as sub-packages, few top-level modules, no import cycles (function-local
imports counted), one stage list, no shared mutable state between web modules, and Lua that touches only the keys
it is given."""

from __future__ import annotations

import ast
import re

from fixtures import ROOT

PKG = ROOT / "src" / "routing_engine"
ROLES = ("domain", "models", "stages", "infra", "web")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = ast.parse(p.read_text())
    return out


def _edges(mods: dict[str, ast.Module]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, tree in mods.items():
        is_pkg = (PKG.parent / (m.replace(".", "/") + "/__init__.py")).exists()
        here = m.split(".") if is_pkg else m.split(".")[:-1]
        for node in ast.walk(tree):  # every import, at module level or inside a function
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):
                    edges[m].add(t)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(_edges(_modules())) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_roles_are_sub_packages_and_the_top_level_is_small():
    for role in ROLES:
        assert (PKG / role / "__init__.py").is_file(), role
    top = sorted(p.name for p in PKG.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 8, top


def test_layers_point_one_way():
    """models and domain never import Redis or aiohttp; nothing below web imports web; infra never imports
    stages; domain imports nothing of models, stages, infra or web."""
    mods = _modules()
    for m, tree in mods.items():
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        if m.startswith(("routing_engine.models", "routing_engine.domain")):
            assert not {x for x in names if x.split(".")[0] in ("redis", "aiohttp")}, m
    edges = _edges(mods)
    for m, deps in edges.items():
        role = m.split(".")[1] if m.count(".") else ""
        if role in ("domain", "models", "stages", "infra"):
            assert not {d for d in deps if d.startswith("routing_engine.web")}, m
        if role == "infra":
            assert not {d for d in deps if d.startswith("routing_engine.stages")}, m
        if role == "domain":
            assert not {d for d in deps if d.split(".")[1:2] and d.split(".")[1] in ("models", "stages", "infra")}, m


def test_every_module_says_its_job():
    for m, tree in _modules().items():
        assert ast.get_docstring(tree), f"{m} has no docstring"


def test_web_modules_share_no_mutable_module_state():
    """No web module imports another's module-level dict, list, set or route table: shared objects travel in
    the app's one state object."""
    trees = {p.stem: ast.parse(p.read_text()) for p in (PKG / "web").glob("*.py")}
    mutable = {}
    for mod, tree in trees.items():
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Dict, ast.List, ast.Set, ast.Call)):
                for t in node.targets:
                    if isinstance(t, ast.Name) and not (isinstance(node.value, ast.Call)
                                                        and ast.unparse(node.value.func) != "web.RouteTableDef"):
                        mutable[(mod, t.id)] = ast.unparse(node)[:60]
    assert ("tickets", "routes") in mutable  # the scan sees what it looks for
    for mod, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in trees:
                shared = [a.name for a in node.names if (node.module, a.name) in mutable]
                assert not shared, f"{mod} imports module state {shared} from {node.module}"


def test_one_stage_list():
    from routing_engine.cli import STAGE_NAMES
    from routing_engine.infra.keys import STAGE_INPUTS
    from routing_engine.stages.registry import PIPELINE_STAGES, REGISTRY, STAGES

    assert tuple(REGISTRY) == tuple(STAGE_INPUTS) == STAGES == STAGE_NAMES
    assert "alerts" not in PIPELINE_STAGES and set(PIPELINE_STAGES) < set(STAGES)


# --- Lua: every key a script touches arrives in KEYS

CALL = re.compile(r"redis\.call,?\s*\(?\s*'(\w+)'\s*,\s*([^,)]+)(?:,\s*([^,)]+))?")
FROM_KEYS = re.compile(r"^[ \t]*(?:local[ \t]+)?([\w \t,\[\]]+?)[ \t]*=[ \t]*(KEYS\[[^\n]*)", re.M)


def _key_names(src: str) -> set[str]:
    """Names bound to KEYS entries: `local rec = KEYS[3]`, `index[s] = KEYS[i]`, `local a, b = KEYS[1], ...`,
    and parameters of local functions called with a KEYS entry (`queue(KEYS[3], ...)`)."""
    names = {"KEYS"}
    for lhs, rhs in FROM_KEYS.findall(src):
        targets = [t.strip() for t in lhs.split(",")]
        values = [v.strip() for v in rhs.split(",")]
        for t, v in zip(targets, values):
            if v.startswith("KEYS["):
                names.add(t.split()[-1].split("[")[0])
    # and names bound to such a name (`agent_key[agent] = akey`)
    for lhs, rhs in re.findall(r"^[ \t]*(?:local[ \t]+)?([\w\[\]]+)[ \t]*=[ \t]*(\w+)[ \t]*$", src, re.M):
        if rhs in names:
            names.add(lhs.split("[")[0])
    for fn in set(re.findall(r"(\w+)\(KEYS\[", src)):
        m = re.search(rf"function {fn}\((\w+)", src)
        if m:
            names.add(m.group(1))
    return names


def test_lua_scripts_touch_only_declared_keys():
    for path in sorted((ROOT / "streams").glob("*.lua")):
        src = "\n".join(line.split("--")[0] for line in path.read_text().splitlines())
        allowed = _key_names(src)
        assert "':'" not in src and ".. ':" not in src, f"{path.name} builds a key name"
        calls = CALL.findall(src)
        assert calls, path.name  # the scan sees the calls it checks
        for cmd, a1, a2 in calls:
            key = a2 if cmd in ("XINFO", "XGROUP") else a1  # XINFO GROUPS <key>, XGROUP DELCONSUMER <key>
            base = key.strip().split("[")[0]
            assert base in allowed, f"{path.name}: {cmd} on {key.strip()!r}, not a KEYS entry"
