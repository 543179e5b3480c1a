"""The task registry: built-in tasks by name, user tasks from YAML files.

>>> from thresher.tasks import get_task
>>> task = get_task("arith", seed=1)              # the synthetic testbed
>>> task = get_task("gsm8k", dev_size=100)        # local GSM8K files (or hub="openai/gsm8k")
>>> task = get_task("gsm8k-mix", pool_size=4000)  # the gsm8k task of the gsm8k-mix real-data testbed
>>> task = get_task("my_tasks/fractions.yaml")    # a user-defined task

Register another built-in with::

    @register_task("my_task")
    def my_task(**params) -> Task: ...
"""
from __future__ import annotations

import os
from collections.abc import Callable

from thresher.errors import ConfigError, UnknownNameError
from thresher.registry import Registry
from thresher.tasks.arith import ArithTestbed
from thresher.tasks.base import DevTask, PromptFormat, Task, TaskItem
from thresher.tasks.custom import TaskConfigError, TaskDataError, load_custom_task
from thresher.tasks.gsm8k import gsm8k_pool, gsm8k_task
from thresher.tasks.gsm8k_mix import GSM8KMixConfig, GSM8KMixTestbed

__all__ = [
    "Task",
    "DevTask",
    "TaskItem",
    "PromptFormat",
    "TASKS",
    "register_task",
    "get_task",
    "list_tasks",
    "load_custom_task",
    "gsm8k_task",
    "gsm8k_pool",
    "GSM8KMixConfig",
    "GSM8KMixTestbed",
    "TaskConfigError",
    "TaskDataError",
]

TaskFactory = Callable[..., Task]

#: task name -> factory taking keyword params and returning a :class:`Task`
TASKS: Registry[TaskFactory] = Registry("task")


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: register ``factory(**params) -> Task`` under ``name``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a task name must be a non-empty string, got {name!r}")
    if name.endswith((".yaml", ".yml")):
        raise ConfigError(f"task name {name!r} must not end in .yaml/.yml (that means a task file)")
    return TASKS.register(name=name)


@register_task("arith")
def _arith(**params) -> Task:
    return ArithTestbed(**params).task()


@register_task("gsm8k")
def _gsm8k(**params) -> Task:
    return gsm8k_task(**params)


@register_task("gsm8k-mix")
def _gsm8k_mix(**params) -> Task:
    """The ``gsm8k`` task of a gsm8k-mix testbed (takes the testbed's settings; only dev/test/seed/data matter)."""
    return GSM8KMixTestbed(**params).task()


def get_task(name_or_path: str | os.PathLike, **params) -> Task:
    """A task by registered name, or from a YAML file (a path ending in .yaml/.yml).

    ``params`` go to the task's factory (for a YAML task they override its keys).
    """
    key = os.fspath(name_or_path)
    if key.endswith((".yaml", ".yml")):
        return load_custom_task(key, **params)
    if key not in TASKS:
        raise UnknownNameError(f"{TASKS.unknown_message(key)} (or pass a path to a .yaml task file)")
    return TASKS[key](**params)


def list_tasks() -> list[str]:
    """The registered task names, sorted."""
    return sorted(TASKS)
