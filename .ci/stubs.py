"""Prepare the type stubs that mypy checks the TensorRT and CUDA code against: ``python .ci/stubs.py STUB_DIR``.

STUB_DIR/tensorrt holds tensorrt-stubs (installed there by .ci/typecheck). Its ``.pyi`` files come from
pybind11-stubgen and have a few lines Python cannot parse or that mislead a checker; they are repaired in place:
parameters named ``in`` become ``in_``; a parameter without a default after defaulted ones gets ``= ...``; the
import of the ``tensorrt_libs`` wheel (shared libraries, no stubs) goes; ``bool`` annotations name the builtin
(the module's own ``trt.bool`` data type shadows it); and ``Dims`` is iterable and accepted as a tuple or list,
as its docstring says.

STUB_DIR/cuda gets stubs of cuda-python's runtime, from the installed cuda-bindings. cuda-bindings is compiled
with Cython and ships no ``.pyi``; each function carries its signature as the first line of its docstring, e.g.
``cudaMemcpyAsync(dst, src, size_t count, kind: cudaMemcpyKind, stream)``. mypy's stubgen writes the classes and
enums but types those functions as opaque objects, so after stubgen each function becomes a ``def`` read off its
docstring: the parameters by name and count, C integers as ``int``, enum parameters as their enum, anything else
``Any``; every call returns cuda-python's ``(cudaError_t, *values)`` tuple.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from mypy import stubgen

MODULES = ("cuda.bindings.runtime", "cuda.bindings.driver", "cuda.bindings._internal._fast_enum")
_C_INT = re.compile(r"(unsigned\s+)?(int|long|long long|size_t|short|char)\s*")
_OPAQUE = re.compile(r"^(\w+): _cython_[\w.]+\.cython_function_or_method$", re.M)


def _split(params: str) -> list[str]:
    """Split a parameter list at the commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in params:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in [*parts, cur] if p.strip()]


def _param(text: str, module: object) -> str:
    """One docstring parameter ("size_t count", "kind: cudaMemcpyKind", "int flags=0") as a typed stub parameter."""
    text, default = (text.split("=", 1) + [""])[:2]
    decl, _, ann = text.partition(":")
    words = decl.replace("*", " ").split()
    name, ctype, ann = words[-1], " ".join(words[:-1]), ann.strip()
    if ann.isidentifier() and isinstance(getattr(module, ann, None), type):
        kind = ann
    elif ctype and _C_INT.fullmatch(ctype + " ") and "char" not in ctype:
        kind = "int"
    else:
        kind = "Any"
    return f"{name}: {kind}{' = ...' if default else ''}"


def _def(name: str, module: object) -> str:
    doc = (getattr(module, name).__doc__ or "").splitlines()
    sig = re.fullmatch(rf"{name}\((.*)\)", doc[0].strip()) if doc else None
    if sig is None:
        return f"def {name}(*args: Any, **kwargs: Any) -> Any: ..."
    params = _split(sig.group(1))
    return f"def {name}({', '.join(_param(p, module) for p in params)}) -> tuple[Any, ...]: ..."


def _fix_defaults(line: str) -> str:
    """In a one-line ``def``, give ``= ...`` to each parameter that follows a defaulted one without a default."""
    m = re.fullmatch(r"(\s*def \w+\()(.*)(\)( -> .*)?:.*)", line)
    if m is None:
        return line
    params, seen_default = _split(m.group(2)), False
    for i, p in enumerate(params):
        if "=" in p:
            seen_default = True
        elif seen_default and not p.startswith("*"):
            params[i] = p + " = ..."
    return m.group(1) + ", ".join(params) + m.group(3)


def repair_tensorrt(root: Path) -> None:
    for path in root.rglob("*.pyi"):
        text = re.sub(r"^import tensorrt_libs as tensorrt_libs\n", "", path.read_text(), flags=re.M)
        text = re.sub(r"([(,] ?)in: ", r"\1in_: ", text)
        text = "\n".join(_fix_defaults(line) for line in text.split("\n"))
        if path.name == "tensorrt.pyi":
            # The module's ``bool: DataType`` (trt.bool) shadows the builtin in every ``-> bool`` of the stubs.
            text = re.sub(r"(?<!^)(?<![\w.])bool\b", "builtins.bool", text, flags=re.M)
            text = text.replace(
                "from __future__ import annotations\n", "from __future__ import annotations\nimport builtins\n"
            )
            # Dims "behave like Python tuples" and "tuple or list can be used in place of this class" (its docstring).
            text = re.sub(r": Dims\b", ": Dims | tuple[int, ...] | list[int]", text)
            at = text.index("    def __len__(self) -> int:", text.index("\nclass Dims:"))
            text = text[:at] + "    def __iter__(self) -> typing.Iterator[int]: ...\n" + text[at:]
        path.write_text(text)


def write_cuda(out: Path) -> None:
    for name in MODULES:
        stubgen.main(["--quiet", "-m", name, "-o", str(out)])
        module = importlib.import_module(name)
        path = out / (name.replace(".", "/") + ".pyi")
        text = _OPAQUE.sub(lambda m, mod=module: _def(m.group(1), mod), path.read_text())
        text = re.sub(r"^import _cython_[\w.]+\n", "", text, flags=re.M)
        path.write_text(text)


if __name__ == "__main__":
    stub_dir = Path(sys.argv[1])
    repair_tensorrt(stub_dir / "tensorrt")
    write_cuda(stub_dir / "cuda")
