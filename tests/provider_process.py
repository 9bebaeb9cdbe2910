"""How a dynamic provider runs in its own process, for tests of the Kibana connector's and the
inference endpoint's providers: the SDK's entry point, and a thread with no engine."""

from __future__ import annotations

import ast
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pulumi.dynamic
from pulumi.runtime import settings


def load_sdk_dynamic_main(name: str) -> ModuleType:
    """The SDK's own pulumi/dynamic/__main__.py, the dynamic provider process's entry point.

    Importing it would serve gRPC forever: it ends with `main()`. It is compiled from its source
    without that one statement, so its `get_provider` is the SDK's code as the engine runs it.
    """
    path = Path(pulumi.dynamic.__file__).with_name("__main__.py")
    tree = ast.parse(path.read_text(), str(path))
    last = tree.body[-1]
    assert isinstance(last, ast.Expr)
    assert isinstance(last.value, ast.Call)
    assert isinstance(last.value.func, ast.Name)
    assert last.value.func.id == "main"
    tree.body = tree.body[:-1]
    module = ModuleType(name)
    module.__file__ = str(path)
    exec(compile(tree, str(path), "exec"), module.__dict__)  # noqa: S102 - the SDK's own source
    return module


def in_provider_thread(call: Callable[[], Any]) -> Any:
    """Run `call` as the SDK's dynamic provider servicer does: on a worker thread of a pool, with
    no engine, so pulumi.log prints "warning: ..." to stderr as in the provider process.

    A fresh thread alone is not enough: Pulumi's settings are context properties that keep the
    first value ever set as their default (pulumi/_utils.py, ContextProperty.fset), so after a
    program ran under mocks in this test process, a new thread would see the mocks' engine.
    """

    def without_engine() -> Any:
        # A ContextProperty, which the SDK's typing sees as its decorator.
        settings.SETTINGS.engine = None  # pyright: ignore[reportAttributeAccessIssue]
        return call()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(without_engine).result()
