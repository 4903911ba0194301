"""DeTrack API v2 shapes: the job loadbay sends, and the assignment rules it follows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FINISHED_STATUSES = frozenset({"completed", "completed_partial"})
# Fields that hold personal data: masked whenever a payload is shown (dry run, logs).
PERSONAL_FIELDS = frozenset(
    {
        "address",
        "company_name",
        "deliver_to_collect_from",
        "phone_number",
        "notify_email",
        "instructions",
        "postal_code",
    }
)


class Item(BaseModel):
    """One line of a job's items: a package's description and quantity."""

    model_config = ConfigDict(extra="forbid")

    sku: str | None = None
    description: str | None = None
    quantity: int


class Job(BaseModel):
    """A delivery job as DeTrack takes it. Only fields DeTrack knows; `id` is never sent."""

    model_config = ConfigDict(extra="forbid")

    do_number: str
    date: str
    type: Literal["Delivery", "Collection"] = "Delivery"
    address: str = Field(min_length=1)
    tracking_number: str | None = None
    order_number: str | None = None
    company_name: str | None = None
    deliver_to_collect_from: str | None = None
    phone_number: str | None = None
    notify_email: str | None = None
    instructions: str | None = None
    postal_code: str | None = None
    city: str | None = None
    state: str | None = None
    country: str | None = None
    assign_to: str | None = None
    items: list[Item] = Field(default_factory=list)

    def to_api(self) -> dict[str, object]:
        """The job as DeTrack's API takes it (fields that are None left out)."""
        return self.model_dump(exclude_none=True)

    def masked(self) -> dict[str, object]:
        """The job with its personal fields as *** (for dry runs and logs)."""
        return {k: ("***" if k in PERSONAL_FIELDS else v) for k, v in self.to_api().items()}


class Rule(BaseModel):
    """One assignment rule: the first rule whose condition matches names the vehicle."""

    model_config = ConfigDict(extra="forbid")

    vehicle: str = Field(min_length=1)
    postal_code_prefix: str | None = None
    city: str | None = None
    state: str | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> Rule:
        given = [c for c in (self.postal_code_prefix, self.city, self.state) if c]
        if len(given) != 1:
            raise ValueError("each rule needs exactly one of postal_code_prefix, city or state")
        return self

    def matches(self, job: Job) -> bool:
        """The rule's one condition holds for the job (case and spaces ignored)."""
        if self.postal_code_prefix:
            code = (job.postal_code or "").replace(" ", "").upper()
            return code.startswith(self.postal_code_prefix.replace(" ", "").upper())
        if self.city:
            return (job.city or "").strip().casefold() == self.city.strip().casefold()
        return (job.state or "").strip().casefold() == (self.state or "").strip().casefold()


class AssignmentRules(BaseModel):
    """DISPATCH_RULES: ordered rules, then the fallback strategy for jobs no rule matches."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=list)
    fallback: Literal["least_loaded", "none"] = "least_loaded"
