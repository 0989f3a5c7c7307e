"""Events bound to components by field name, not by position.

A Gradio event passes its inputs to the function in list order, and the Gradio API names its
parameters after the function's. ``endpoint`` builds both from one ordered tuple of names: the
inputs are looked up by name in a dict of components, and the function's signature carries
exactly those names (the API's parameter names), so no list has to match another by order.
The handler receives the values as one dict of named fields, ready for a request's
``from_fields``.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields
from typing import Any, Callable, Mapping, Sequence

import gradio as gr


def request_fields(cls, exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The field names of a request dataclass, in order (the API's parameter order)."""
    return tuple(f.name for f in fields(cls) if f.name not in exclude)


def request_defaults(cls) -> dict[str, Any]:
    """The defaults of a request dataclass's fields (those that have one)."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def endpoint(names: Sequence[str], components: Mapping[str, gr.components.Component],
             handler: Callable[..., Any], doc: str, defaults: Mapping[str, Any] | None = None,
             track_tqdm: bool = False) -> tuple[Callable, list]:
    """(event function, inputs) for ``names``.

    ``handler(values, request, progress)`` gets ``{name: value}``; it may be a generator (its
    items are streamed, as for live previews). ``defaults`` are the API's default values.
    """
    names = tuple(names)
    inputs = [components[name] for name in names]
    defaults = dict(defaults or {})
    count = len(names)

    if inspect.isgeneratorfunction(handler):
        def event(*args):
            yield from handler(dict(zip(names, args[:count])), *args[count:])
    else:
        def event(*args):
            return handler(dict(zip(names, args[:count])), *args[count:])

    parameters = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=defaults.get(name, inspect.Parameter.empty))
        for name in names
    ]
    # Gradio fills these two by their annotation and default (gr.Request, gr.Progress).
    parameters.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                        annotation=gr.Request))
    parameters.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=gr.Progress(track_tqdm=track_tqdm)))
    # Once a parameter has a default, every later one needs one (the API shows them optional).
    seen_default = False
    for p in parameters:
        if p.default is not inspect.Parameter.empty:
            seen_default = True
        elif seen_default:
            raise ValueError(f"{p.name} needs a default after a parameter that has one")
    event.__signature__ = inspect.Signature(parameters)
    event.__annotations__ = {"request": gr.Request}
    event.__doc__ = doc
    event.__name__ = handler.__name__
    return event, inputs
