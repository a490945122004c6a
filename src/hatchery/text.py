"""Names people read back (a project's, a key's): no control characters, and no
bidirectional or invisible formatting characters, which make a name display as another."""

import re
from typing import Annotated

from pydantic import AfterValidator

_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def visible(value: str) -> str:
    found = _HIDDEN.search(value)
    if found is not None:
        raise ValueError(f"character U+{ord(found.group()):04X} is not allowed in a name")
    return value


VisibleText = Annotated[str, AfterValidator(visible)]
