"""Cache policies for stages whose output is a pure function of their inputs and our code.

Prefect's ``TASK_SOURCE`` hashes only the lines of the task function, and our tasks are thin
wrappers: a change to the code they call would not change the key. :class:`ModuleSource` hashes
the source of the modules that do the work, so "identical inputs and code" means exactly that.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

CACHE_EXPIRATION = timedelta(days=7)
"""How long a cached stage result is reused; after that the work runs again."""


@dataclass
class ModuleSource(CachePolicy):
    """A key that changes whenever the source of any of the named modules changes."""

    modules: tuple[str, ...] = ()

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any] | None,
        flow_parameters: dict[str, Any] | None,
        **kwargs: Any,
    ) -> str | None:
        sources = [inspect.getsource(importlib.import_module(name)) for name in self.modules]
        return hash_objects(*sources, raise_on_failure=True)


def inputs_and_code(*modules: str) -> CachePolicy:
    """Cache on the task's inputs, its own source and the source of ``modules``."""
    return INPUTS + TASK_SOURCE + ModuleSource(modules=modules)
