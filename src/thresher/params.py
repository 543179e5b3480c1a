"""Parameter validation, one way for every plug-in: a pydantic model per signal, selector,
operator, task config and bench config, and one translation of its errors into a message
a user can act on (the parameter, what is wrong, and the accepted keys), never pydantic's
raw text.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from thresher.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def explain(e: ValidationError, model: type[BaseModel], what: str) -> str:
    """One line per problem: ``what: parameter 'x': <reason>``; unknown keys list the accepted ones."""
    accepted = sorted(model.model_fields)
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(params)"
        if err.get("type") == "extra_forbidden":
            close = difflib.get_close_matches(loc, accepted, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{what}: unknown parameter {loc!r}{hint}; it takes: {', '.join(accepted) or 'no parameters'}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, Mapping) else f" (got {got!r})"
            lines.append(f"{what}: parameter {loc!r}: {err.get('msg', 'invalid')}{shown}")
    return "\n".join(lines)


def validate_params(model: type[M], params: Mapping[str, Any] | None, what: str) -> M:
    """``model(**params)``, raising :class:`ConfigError` with :func:`explain`'s message."""
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{what}: params must be a mapping of name: value, got {type(params).__name__}")
    try:
        return model(**dict(params or {}))
    except ValidationError as e:
        raise ConfigError(explain(e, model, what)) from None
