"""Python source under construction: functions of indented lines, the constants they refer
to, fresh local names, and compiling the whole once."""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Function:
    """One generated function: a header, then lines at the current indentation."""

    def __init__(self, module: Module, header: str) -> None:
        self.module = module
        self.lines = [header]
        self.depth = 1

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self.line(header)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def fresh(self, hint: str) -> str:
        return self.module.fresh(hint)

    def const(self, value: Any, hint: str) -> str:
        return self.module.const(value, hint)


class Module:
    """The generated functions and the names they use (constants and runtime helpers)."""

    def __init__(self, title: str, namespace: dict[str, Any]) -> None:
        self.title = title
        self.namespace = dict(namespace)
        self.functions: list[Function] = []
        self._counter = itertools.count()
        self._const_names: dict[int, str] = {}

    def function(self, header: str) -> Function:
        fn = Function(self, header)
        self.functions.append(fn)
        return fn

    def fresh(self, hint: str) -> str:
        return f"{hint}{next(self._counter)}"

    def const(self, value: Any, hint: str) -> str:
        """A name for ``value`` in the generated module (one name per object)."""
        name = self._const_names.get(id(value))
        if name is None:
            name = self._const_names[id(value)] = f"{hint.upper()}_{next(self._counter)}"
            self.namespace[name] = value
        return name

    def text(self) -> str:
        body = "\n\n".join("\n".join(fn.lines) for fn in self.functions)
        return f"# {self.title}\n\n{body}\n"

    def compile(self, tag: str) -> dict[str, Any]:
        """Compile and run the source once; return the namespace holding its functions. The
        source is registered with linecache (as ``<title #tag>``) so a traceback through it
        shows the lines."""
        text = self.text()
        filename = f"<{self.title} #{tag}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        namespace = dict(self.namespace)
        exec(compile(text, filename, "exec"), namespace)  # noqa: S102 - our own generated source
        namespace["__source__"] = text
        return namespace
