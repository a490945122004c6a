import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from hatchery.environments.masking import FAKE_KINDS, STRATEGIES

# An identifier as the catalog spells it: no dot, no space, no control character.
_PART = r"[^.\s\x00-\x1f\x7f]{1,63}"
TableName = Annotated[
    str,
    StringConstraints(pattern=rf"^{_PART}(\.{_PART})?$"),
    Field(description="`schema.table`, or `table` in `public`.", examples=["public.users"]),
]
ColumnName = Annotated[str, StringConstraints(pattern=rf"^{_PART}$")]


class MaskingRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: TableName
    column: ColumnName
    strategy: str = Field(
        description="`email`, `hash`, `null`, `fixed` (with `value`), `keep` (left as it is, "
        f"even when flagged sensitive) or `fake:<kind>` ({', '.join(sorted(FAKE_KINDS))}).",
        examples=["email"],
    )
    value: Annotated[str, StringConstraints(max_length=1000, pattern=r"^[^\x00]*$")] | None = Field(
        default=None, description="The value of a `fixed` rule (cast to the column's type)."
    )

    @model_validator(mode="after")
    def _known(self) -> "MaskingRule":
        kind = self.strategy.removeprefix("fake:")
        if self.strategy not in STRATEGIES and not (
            self.strategy.startswith("fake:") and kind in FAKE_KINDS
        ):
            raise ValueError(f"unknown strategy {self.strategy!r}")
        if (self.strategy == "fixed") != (self.value is not None):
            raise ValueError("`value` goes with the `fixed` strategy, and only with it")
        if "." not in self.table:
            self.table = f"public.{self.table}"
        return self


class MaskingRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[MaskingRule] = Field(
        max_length=1000,
        description="On top of the default (every column the schema API flags `sensitive` "
        "is hashed, or set to null where its type has no hash); a rule wins over it.",
    )


class MaskingOut(MaskingRules):
    environment: str


class RefreshCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: Annotated[str, StringConstraints(min_length=1, max_length=20)] = Field(
        alias="from", description="The environment whose data is copied (never written)."
    )
    backup_id: uuid.UUID | None = Field(
        default=None, description="Copy this backup of the source instead of taking one now."
    )
    dry_run: bool = Field(
        default=False,
        description="Answer with the masking plan (200) and copy nothing.",
    )


class MaskedColumn(BaseModel):
    table: str
    column: str
    type: str
    strategy: str
    rows: int = Field(description="Rows of the table in the source now.")
    verified: bool = Field(
        description="Whether the refresh checks that no source value is left in it (not for "
        "`null`, and not for `fake:` kinds drawn from a short list, such as names)."
    )


class RefreshPlan(BaseModel):
    source: str
    target: str
    columns: list[MaskedColumn]
    problems: list[str] = Field(
        description="What would fail the refresh's masking step (a rule naming a column that "
        "does not exist, a strategy that cannot apply to a column)."
    )


class RefreshSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: Annotated[str, StringConstraints(min_length=1, max_length=20)] = Field(alias="from")
    at: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="`<days> HH:MM[:SS] <IANA time zone>`, days as in deploy windows.",
        examples=["daily 03:00 Europe/Berlin"],
    )


class RefreshScheduleOut(BaseModel):
    environment: str
    schedule: dict[str, Any] | None = Field(description="`from` and `at`; none when unset.")
    next_at: datetime | None = Field(description="When the workers start the next refresh.")
