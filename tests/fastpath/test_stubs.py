"""The stubs ``_fastpath/_compiled/*.pyi`` (the type source of the public API), the compiled
modules and the pure twin export the same names with the same signatures.

For every module with a pure twin (and for ``b64``, stubs vs compiled only) this compares:

* the exported names: ``__all__`` of the stub, of the compiled module and of the pure module, and
  every public function or class a runtime module defines must be in its ``__all__``;
* every function, method and constructor: parameter names, kinds and default values, from the
  stub's syntax tree, ``inspect.signature`` of the compiled functions (Cython's ``binding=True``)
  and of the pure ones; compiled constructors from the signature line Cython's embedsignature
  writes into the class docstring, cross-checked by calling them with keyword arguments;
* class members: the same public methods and properties on all three;
* types: the stub's annotations against the pure twin's (textually, after normalisation), and
  against the C types of the compiled parameters (``double now`` must be ``float`` in the stub,
  ``str stream_sid=None`` may be ``str | None``, ``str name not None`` must be ``str``).

Every difference is listed in the failure message.  ``test_checker_*`` feed the checker altered
stubs and modules to show it fails on a name or a parameter added to one side only.
``test_mypy_stubtest`` also runs mypy's own stubtest (stubs vs compiled) where mypy is installed.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from impls import NO_EXTENSIONS

import _fastpath

STUBS = Path(_fastpath.__file__).parent / "_compiled"
TWINNED = ("g711", "resample", "framing", "ledger")
COMPILED_ONLY = ("b64",)
# Arguments that construct each class (the constructor check calls it with them as keywords).
SAMPLE_ARGS = {"Resampler": {"src_rate": 8000, "dst_rate": 24000},
               "PlayoutLedger": {"bytes_per_ms": 8, "default_latency_ms": 50.0, "lead_ms": 0.0}}
# Python type a C type of a compiled parameter stands for (Cython rejects anything else).
C_TYPES = {"int": "int", "long": "int", "int64_t": "int", "Py_ssize_t": "int", "double": "float",
           "float": "float", "bint": "bool", "str": "str", "bytes": "bytes"}
NUMERIC_C_TYPES = {"int", "long", "int64_t", "Py_ssize_t", "double", "float", "bint"}
NO_DEFAULT = "<no default>"


# ----------------------------------------------------------------------------------------------
# A uniform description of an API: what the stub says and what a runtime module has
# ----------------------------------------------------------------------------------------------
@dataclass
class Param:
    name: str
    kind: str  # inspect.Parameter kind name
    default: Any = NO_DEFAULT
    annotation: str | None = None  # normalised source text, None when not annotated
    ctype: str | None = None  # compiled only: C type in the embedded signature
    not_none: bool = False  # compiled only: "not None" in the embedded signature

    def shape(self) -> tuple[str, str, str]:
        return self.name, self.kind, repr(self.default)


@dataclass
class Func:
    params: list[Param] | None  # None: not introspectable (never for our own API)
    returns: str | None = None


@dataclass
class Cls:
    init: Func | None
    members: dict[str, tuple[str, Func | str | None]] = field(default_factory=dict)
    # member name -> ("method", Func) | ("property", return annotation)


@dataclass
class Reexport:
    target: str  # "module.name" the object comes from


@dataclass
class Api:
    all: list[str] | None
    items: dict[str, Func | Cls | Reexport]
    unlisted: list[str] = field(default_factory=list)  # public definitions missing from __all__
    objects: dict[str, Any] = field(default_factory=dict)  # runtime only: name -> object


def normalise(annotation: str | None) -> str | None:
    return None if annotation is None else ast.unparse(ast.parse(annotation, mode="eval"))


# ---------------------------------------------------------------------------------- from a stub
def _stub_func(node: ast.FunctionDef) -> Func:
    a = node.args
    params: list[Param] = []
    positional = a.posonlyargs + a.args
    defaults = [NO_DEFAULT] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = "POSITIONAL_ONLY" if i < len(a.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        params.append(Param(arg.arg, kind, _literal(default), _ann(arg.annotation)))
    if a.vararg:
        params.append(Param(a.vararg.arg, "VAR_POSITIONAL", annotation=_ann(a.vararg.annotation)))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        params.append(Param(arg.arg, "KEYWORD_ONLY", _literal(default), _ann(arg.annotation)))
    if a.kwarg:
        params.append(Param(a.kwarg.arg, "VAR_KEYWORD", annotation=_ann(a.kwarg.annotation)))
    return Func(params, _ann(node.returns))


def _literal(node: ast.expr | str | None) -> Any:
    if node is None or node == NO_DEFAULT:
        return NO_DEFAULT
    assert isinstance(node, ast.expr)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return f"<not a literal: {ast.unparse(node)}>"  # never equal to a runtime default


def _ann(node: ast.expr | None) -> str | None:
    return None if node is None else normalise(ast.unparse(node))


def _decorators(node: ast.FunctionDef | ast.ClassDef) -> set[str]:
    return {ast.unparse(d) for d in node.decorator_list}


def stub_api(source: str, package: str = "_fastpath._compiled") -> Api:
    """The API a stub declares (``package`` resolves its relative imports)."""
    tree = ast.parse(source)
    items: dict[str, Func | Cls | Reexport] = {}
    names_all: list[str] | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]:
            names_all = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            for alias in node.names:
                if alias.asname == alias.name:  # explicit re-export ("import x as x")
                    items[alias.name] = Reexport(f"{base}.{alias.name}")
        elif isinstance(node, ast.FunctionDef):
            items[node.name] = _stub_func(node)
        elif isinstance(node, ast.ClassDef):
            items[node.name] = _stub_class(node)
    return Api(names_all, items)


def _stub_class(node: ast.ClassDef) -> Cls:
    init: Func | None = None
    members: dict[str, tuple[str, Func | str | None]] = {}
    for item in node.body:
        if not isinstance(item, ast.FunctionDef):
            continue
        if item.name in ("__init__", "__new__"):
            func = _stub_func(item)
            assert func.params is not None
            init = Func(func.params[1:], None)  # without self / cls
        elif not item.name.startswith("_"):
            if "property" in _decorators(item):
                members[item.name] = ("property", _ann(item.returns))
            else:
                members[item.name] = ("method", _stub_func(item))
    return Cls(init, members)


# ------------------------------------------------------------------------------ from a runtime
# Cython's embedsignature line: "name(self, int a, double b=1.0, str c=None, T d not None)"
_EMBEDDED = re.compile(r"^(?:\w+\.)*(\w+)\((.*)\)")
_EMBEDDED_PARAM = re.compile(r"^(?:(?P<ctype>[\w.]+(?:\s*\*+)?)\s+)?(?P<name>\*{0,2}\w+)"
                             r"(?P<not_none>\s+not\s+None)?(?:\s*=\s*(?P<default>.+))?$")


def embedded_signature(doc: str | None, name: str) -> list[Param] | None:
    """Parameters of the signature line Cython writes at the top of a docstring, None if absent."""
    if not doc:
        return None
    match = _EMBEDDED.match(doc.strip().splitlines()[0])
    if not match or match[1] != name:
        return None
    params = []
    for text in filter(None, (p.strip() for p in match[2].split(","))):
        m = _EMBEDDED_PARAM.match(text)
        assert m, f"cannot parse embedded parameter {text!r} of {name}"
        pname = m["name"]
        kind = ("VAR_KEYWORD" if pname.startswith("**") else
                "VAR_POSITIONAL" if pname.startswith("*") else "POSITIONAL_OR_KEYWORD")
        default = ast.literal_eval(m["default"]) if m["default"] is not None else NO_DEFAULT
        params.append(Param(pname.lstrip("*"), kind, default, ctype=m["ctype"],
                            not_none=bool(m["not_none"])))
    return params


def pyx_not_none(module: str) -> dict[str, set[str]]:
    """``{"func" or "Class.method": {parameters declared "not None"}}`` from the .pyx source
    (Cython's embedded signature line drops "not None")."""
    out: dict[str, set[str]] = {}
    cls = None
    source = (STUBS / f"{module}.pyx").read_text()
    for match in re.finditer(r"^(?P<indent>[ ]*)(?:(?:cdef[ ]+)?class[ ]+(?P<cls>\w+)|def[ ]+(?P<def>\w+)\()",
                             source, re.MULTILINE):
        if match["cls"]:
            cls = match["cls"]
            continue
        if not match["indent"]:
            cls = None
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        qualname = f"{cls}.{match['def']}" if cls else match["def"]
        out[qualname] = set(re.findall(r"(\w+)\s+not\s+None", source[match.end():i]))
    return out


def _runtime_func(obj: Any, name: str) -> Func:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return Func(None)
    ctypes = {p.name: p for p in embedded_signature(getattr(obj, "__doc__", None), name) or []}
    params = []
    for p in sig.parameters.values():
        ann = p.annotation if p.annotation is not inspect.Parameter.empty else None
        default = p.default if p.default is not inspect.Parameter.empty else NO_DEFAULT
        embedded = ctypes.get(p.name)
        params.append(Param(p.name, p.kind.name, default, normalise(ann) if isinstance(ann, str) else None,
                            embedded.ctype if embedded else None,
                            embedded.not_none if embedded else False))
    ret = sig.return_annotation
    return Func(params, normalise(ret) if isinstance(ret, str) else None)


def _runtime_class(cls: type) -> Cls:
    # compiled: the signature line Cython (or we, for __cinit__) wrote into the docstring
    embedded = embedded_signature(cls.__doc__, cls.__name__)
    init = Func(embedded) if embedded is not None else _runtime_func(cls, cls.__name__)
    members: dict[str, tuple[str, Func | str | None]] = {}
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            ret = value.fget.__annotations__.get("return") if value.fget else None
            members[name] = ("property", normalise(ret) if isinstance(ret, str) else None)
        elif inspect.isgetsetdescriptor(value) or inspect.ismemberdescriptor(value):
            members[name] = ("property", None)  # compiled: C getter, no annotation
        elif callable(value):
            members[name] = ("method", _runtime_func(value, f"{name}"))
        else:
            members[name] = ("attribute", None)
    return Cls(init, members)


def runtime_api(module: types.ModuleType) -> Api:
    names_all = getattr(module, "__all__", None)
    items: dict[str, Func | Cls | Reexport] = {}
    unlisted = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or callable(obj)):
            continue
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if defined_here and (names_all is None or name not in names_all):
            unlisted.append(name)
        if names_all is not None and name not in names_all:
            continue
        if not defined_here:
            items[name] = Reexport(f"{obj.__module__}.{obj.__qualname__}")
        elif inspect.isclass(obj):
            items[name] = _runtime_class(obj)
        else:
            items[name] = _runtime_func(obj, name)
    objects = {name: getattr(module, name) for name in names_all or () if hasattr(module, name)}
    return Api(names_all, items, unlisted, objects)


# ----------------------------------------------------------------------------------- comparison
def _compare_params(where: str, sides: dict[str, Func | None], out: list[str]) -> None:
    shapes = {side: ([p.shape() for p in f.params] if f and f.params is not None else None)
              for side, f in sides.items()}
    for side, shape in shapes.items():
        if shape is None:
            out.append(f"{where}: no signature on the {side} side")
    known = {side: shape for side, shape in shapes.items() if shape is not None}
    if len({repr(s) for s in known.values()}) > 1:
        out.append(f"{where}: parameters differ: " + "; ".join(f"{side} {s}" for side, s in known.items()))


def _compare_types(where: str, stub: Func, pure: Func | None, compiled: Func | None,
                   out: list[str]) -> None:
    assert stub.params is not None
    by_name = {p.name: p for p in stub.params}
    for side, func in (("pure", pure), ("compiled", compiled)):
        for p in func.params or [] if func else []:
            stub_param = by_name.get(p.name)
            if stub_param is None:
                continue
            if side == "pure" and p.name not in ("self", "cls") and p.annotation != stub_param.annotation:
                out.append(f"{where}({p.name}): stub says {stub_param.annotation}, pure says {p.annotation}")
            if side == "compiled" and p.ctype:
                _check_ctype(f"{where}({p.name})", p, stub_param.annotation, out)
    if pure is not None and pure.returns != stub.returns and not where.endswith(".__init__"):
        out.append(f"{where}: stub returns {stub.returns}, pure returns {pure.returns}")


def _check_ctype(where: str, p: Param, annotation: str | None, out: list[str]) -> None:
    """A C-typed compiled parameter accepts exactly that type (plus None for an object type
    without "not None"): the stub must not promise more."""
    assert p.ctype is not None
    expected = C_TYPES.get(p.ctype, p.ctype)  # extension types are written as in the stub
    allowed = {expected}
    if p.ctype not in NUMERIC_C_TYPES and not p.not_none:
        allowed.add(f"{expected} | None")
    if annotation not in allowed:
        out.append(f"{where}: compiled declares {p.ctype}{' not None' if p.not_none else ''}, "
                   f"the stub says {annotation} (expected {' or '.join(sorted(allowed))})")


def compare(module: str, stub: Api, compiled: Api | None, pure: Api | None) -> list[str]:
    """Every difference between the descriptions of ``module`` (empty: they agree)."""
    out: list[str] = []
    sides = {"stub": stub} | ({"compiled": compiled} if compiled else {}) | ({"pure": pure} if pure else {})
    for side, api in sides.items():
        if api.all is None:
            out.append(f"{module}: no __all__ in the {side} module")
        out.extend(f"{module}.{name}: public in the {side} module but not in its __all__"
                   for name in api.unlisted)
    names = {side: set(api.all or ()) for side, api in sides.items()}
    for name in sorted(set().union(*names.values())):
        missing = [side for side, found in names.items() if name not in found]
        if missing:
            out.append(f"{module}.{name}: exported by {sorted(set(sides) - set(missing))}, "
                       f"missing from {missing}")
    out.extend(f"{module}.{name}: defined in the stub but not in its __all__"
               for name in sorted(set(stub.items) - set(stub.all or ()))
               if not isinstance(stub.items[name], Reexport) and not name.startswith("_"))
    for name in sorted(set.intersection(*names.values())):
        entries = {side: api.items.get(name) for side, api in sides.items()}
        stub_entry = stub.items.get(name)
        if isinstance(stub_entry, Reexport):  # the runtime objects must be the one re-exported
            owner, _, attr = stub_entry.target.rpartition(".")
            expected = getattr(importlib.import_module(owner), attr)
            for side, api in sides.items():
                if side != "stub" and api.objects.get(name) is not expected:
                    out.append(f"{module}.{name}: the stub re-exports {stub_entry.target}, "
                               f"the {side} module has {api.objects.get(name)!r}")
            continue
        _compare_item(f"{module}.{name}", entries, out)
    return out


def _compare_item(where: str, entries: dict[str, Any], out: list[str]) -> None:
    kinds = {side: type(e).__name__ for side, e in entries.items()}
    stub = entries["stub"]
    if stub is None:
        out.append(f"{where}: listed in the stub's __all__ but not defined there")
        return
    if len(set(kinds.values())) > 1:
        out.append(f"{where}: different kinds {kinds}")
        return
    if isinstance(stub, Func):
        _compare_params(where, entries, out)
        _compare_types(where, stub, entries.get("pure"), entries.get("compiled"), out)
    elif isinstance(stub, Cls):
        _compare_class(where, entries, out)


def _compare_class(where: str, entries: dict[str, Cls], out: list[str]) -> None:
    stub = entries["stub"]
    _compare_params(f"{where}.__init__", {side: c.init for side, c in entries.items()}, out)
    if stub.init is not None:
        _compare_types(f"{where}.__init__", stub.init, entries["pure"].init if "pure" in entries else None,
                       entries["compiled"].init if "compiled" in entries else None, out)
    members = {side: c.members for side, c in entries.items()}
    for name in sorted(set().union(*members.values())):
        found = {side: m.get(name) for side, m in members.items()}
        missing = [side for side, m in found.items() if m is None]
        if missing:
            out.append(f"{where}.{name}: missing from {missing}")
            continue
        kinds = {side: m[0] for side, m in found.items() if m}
        if len(set(kinds.values())) > 1:
            out.append(f"{where}.{name}: different kinds {kinds}")
        elif kinds["stub"] == "method":
            funcs = {side: m[1] for side, m in found.items() if m}
            _compare_params(f"{where}.{name}", funcs, out)
            _compare_types(f"{where}.{name}", funcs["stub"], funcs.get("pure"), funcs.get("compiled"), out)
        elif "pure" in found and found["pure"] and found["stub"] and found["pure"][1] != found["stub"][1]:
            out.append(f"{where}.{name}: stub property type {found['stub'][1]}, pure {found['pure'][1]}")


def stub_source(module: str) -> str:
    return (STUBS / f"{module}.pyi").read_text()


def apis(module: str, *, compiled: bool = True) -> tuple[Api, Api | None, Api | None]:
    pure = importlib.import_module(f"_fastpath._pure.{module}") if module in TWINNED else None
    if not compiled:
        return stub_api(stub_source(module)), None, runtime_api(pure) if pure else None
    compiled_api = runtime_api(importlib.import_module(f"_fastpath._compiled.{module}"))
    for qualname, params in pyx_not_none(module).items():  # complete the embedded C signatures
        owner, _, name = qualname.rpartition(".")
        item = compiled_api.items.get(owner or name)
        func = (item.members.get(name, (None, None))[1] if isinstance(item, Cls) else item)
        for p in func.params or [] if isinstance(func, Func) else []:
            p.not_none = p.name in params
    return stub_api(stub_source(module)), compiled_api, runtime_api(pure) if pure else None


requires_compiled = pytest.mark.skipif(
    NO_EXTENSIONS, reason="GATEWAY_NO_EXTENSIONS=1: the compiled modules are not loaded in this run")


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------
@requires_compiled
@pytest.mark.parametrize("module", TWINNED + COMPILED_ONLY)
def test_stub_compiled_and_pure_agree(module):
    problems = compare(module, *apis(module))
    assert not problems, "stub / compiled / pure disagree:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("module", TWINNED)
def test_stub_and_pure_agree(module):
    """The same without importing the compiled modules (runs with GATEWAY_NO_EXTENSIONS=1 too)."""
    problems = compare(module, *apis(module, compiled=False))
    assert not problems, "stub / pure disagree:\n  " + "\n  ".join(problems)


@requires_compiled
@pytest.mark.parametrize(("cls_module", "cls_name"), [("resample", "Resampler"), ("ledger", "PlayoutLedger")])
def test_compiled_constructor_takes_the_stub_parameters(cls_module, cls_name):
    """Constructor parameters of extension types come from their docstring line: call the
    classes with exactly the stub's parameter names, and with one positional too many."""
    init = stub_api(stub_source(cls_module)).items[cls_name]
    assert isinstance(init, Cls) and init.init is not None and init.init.params is not None
    assert [p.name for p in init.init.params] == list(SAMPLE_ARGS[cls_name])
    for impl in ("compiled", "pure"):
        cls = getattr(importlib.import_module(f"_fastpath._{impl}.{cls_module}"), cls_name)
        cls(**SAMPLE_ARGS[cls_name])
        with pytest.raises(TypeError):
            cls(*SAMPLE_ARGS[cls_name].values(), 1)


def test_public_api_is_typed_by_the_compiled_stubs():
    """``_fastpath`` exports the same names as both implementations, and type checkers resolve
    them to the compiled modules (the stubs), whichever implementation is active."""
    import _fastpath._pure as pure_pkg

    own = {"COMPILED", "IMPLEMENTATION", "ProtocolError"}
    assert set(_fastpath.__all__) - own == set(pure_pkg.__all__)
    for name in pure_pkg.__all__:
        assert getattr(_fastpath, name) is getattr(_fastpath.IMPLEMENTATION, name)
    init = ast.parse(Path(_fastpath.__file__).read_text())
    typed = [node for node in ast.walk(init) if isinstance(node, ast.ImportFrom) and node.module == "_compiled"]
    assert typed and {a.name for a in typed[0].names} == set(pure_pkg.__all__)
    assert (Path(_fastpath.__file__).parent / "py.typed").is_file()


# ------------------------------------------------------------------------- the checker can fail
def _pure_module_with(module: str, **replace: Any) -> types.ModuleType:
    """A copy of the pure module with some attributes replaced."""
    real = importlib.import_module(f"_fastpath._pure.{module}")
    fake = types.ModuleType(real.__name__)
    fake.__dict__.update(vars(real))
    fake.__dict__.update(replace)
    return fake


def test_checker_reports_a_parameter_added_to_one_side():
    stub = stub_api(stub_source("framing").replace(
        "def encode_clear(stream_sid: str) -> bytes: ...",
        "def encode_clear(stream_sid: str, final: bool = False) -> bytes: ..."))
    pure = runtime_api(importlib.import_module("_fastpath._pure.framing"))
    problems = compare("framing", stub, pure, pure)
    assert any("framing.encode_clear: parameters differ" in p and "final" in p for p in problems)


def test_checker_reports_a_function_added_to_one_side():
    def encode_stop(stream_sid: str) -> bytes:  # defined "in" the fake module, not exported
        return b""
    encode_stop.__module__ = "_fastpath._pure.framing"
    pure = runtime_api(_pure_module_with("framing", encode_stop=encode_stop))
    stub = stub_api(stub_source("framing"))
    problems = compare("framing", stub, pure, pure)
    assert "framing.encode_stop: public in the pure module but not in its __all__" in problems
    exported = runtime_api(_pure_module_with(
        "framing", encode_stop=encode_stop, __all__=[*(stub.all or ()), "encode_stop"]))
    problems = compare("framing", stub, exported, exported)
    assert any(p.startswith("framing.encode_stop: exported by") for p in problems)


def test_checker_reports_a_changed_default_kind_and_type():
    def decode_media(message: str | bytes, *, stream_sid: str | None = "x") -> bytes | None:
        return None
    decode_media.__module__ = "_fastpath._pure.framing"
    pure = runtime_api(_pure_module_with("framing", decode_media=decode_media))
    stub = stub_api(stub_source("framing"))
    problems = compare("framing", stub, pure, pure)
    assert any("framing.decode_media: parameters differ" in p and "KEYWORD_ONLY" in p for p in problems)
    assert any("decode_media(message): stub says str | Buffer, pure says str | bytes" in p for p in problems)


def test_checker_reports_a_method_or_property_on_one_side():
    source = stub_source("ledger").replace("    def clear(self, now: float) -> None: ...\n", "")
    source = source.replace("    @property\n    def busy(self) -> bool: ...\n", "    def busy(self) -> bool: ...\n")
    pure = runtime_api(importlib.import_module("_fastpath._pure.ledger"))
    problems = compare("ledger", stub_api(source), pure, pure)
    assert any(p.startswith("ledger.PlayoutLedger.clear: missing from ['stub']") for p in problems)
    assert any(p.startswith("ledger.PlayoutLedger.busy: different kinds") for p in problems)


def test_checker_reports_a_stub_wider_than_the_c_type():
    for ctype, not_none, annotation, ok in [("double", False, "float", True),
                                            ("double", False, "float | None", False),
                                            ("str", False, "str | None", True),
                                            ("str", True, "str | None", False),
                                            ("Resampler", True, "Resampler", True),
                                            ("int", False, "float", False)]:
        out: list[str] = []
        _check_ctype("f(x)", Param("x", "POSITIONAL_OR_KEYWORD", ctype=ctype, not_none=not_none), annotation, out)
        assert (not out) == ok, (ctype, not_none, annotation, out)


def test_embedded_signature_parser():
    doc = ("PlayoutLedger(int bytes_per_ms=8, double default_latency_ms=50.0, str s=None, "
           "Resampler r not None, *a, **k)\n\nx")
    params = embedded_signature(doc, "PlayoutLedger")
    assert params is not None
    assert [(p.name, p.kind, p.default, p.ctype, p.not_none) for p in params] == [
        ("bytes_per_ms", "POSITIONAL_OR_KEYWORD", 8, "int", False),
        ("default_latency_ms", "POSITIONAL_OR_KEYWORD", 50.0, "double", False),
        ("s", "POSITIONAL_OR_KEYWORD", None, "str", False),
        ("r", "POSITIONAL_OR_KEYWORD", NO_DEFAULT, "Resampler", True),
        ("a", "VAR_POSITIONAL", NO_DEFAULT, None, False),
        ("k", "VAR_KEYWORD", NO_DEFAULT, None, False),
    ]
    assert embedded_signature("Something else.", "PlayoutLedger") is None


# ------------------------------------------------------------------------------- mypy stubtest
@requires_compiled
def test_mypy_stubtest():
    """mypy's stubtest, stubs vs the compiled modules (skipped where mypy is not installed)."""
    pytest.importorskip("mypy.stubtest")
    modules = [f"_fastpath._compiled.{m}" for m in TWINNED + COMPILED_ONLY]
    run = subprocess.run([sys.executable, "-m", "mypy.stubtest", *modules],
                         capture_output=True, text=True, check=False, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
