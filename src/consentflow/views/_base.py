"""The base of every output model (``View``), its field types, and the CLI's JSON form."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _text_id(value: object) -> object:
    return str(value) if isinstance(value, uuid.UUID) else value


def _enum_value(value: object) -> object:
    return getattr(value, "value", value)


#: An id written as text (a UUID from a domain object becomes its canonical string).
TextId = Annotated[str, BeforeValidator(_text_id)]
#: A state, action or other enumerated name, written as its value.
Name = Annotated[str, BeforeValidator(_enum_value)]


class View(BaseModel):
    """Base of every output model: built from attributes or dicts; old names listed for the CLI."""

    model_config = ConfigDict(from_attributes=True)

    #: Deprecated output names the CLI still writes for one release: ``{old: new}``.
    deprecated_aliases: ClassVar[dict[str, str]] = {}


def cli_json(view: BaseModel | Iterable[BaseModel]) -> Any:
    """What the CLI prints for ``--json``: the view's JSON form, plus its deprecated aliases."""
    if isinstance(view, BaseModel):
        data = view.model_dump(mode="json")
        for old, new in getattr(view, "deprecated_aliases", {}).items():
            data[old] = data[new]
        return data
    return [cli_json(v) for v in view]
