"""Request and response bodies of ``POST /events``: UBI events (schema 1.3.0 field names), validated.

The body is a JSON array of events, as UBI's JavaScript collector and Data Prepper send them. Ids,
``action_name`` and the timestamp are required; unknown fields are kept (UBI events may carry more).
The configured limits (batch size, action names) are checked by the endpoint.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt

from twostage_search.service.ubi.records import MAX_ID_CHARS, QUERY_ID_PATTERN, EventRecord, iso

MAX_EVENTS = 10_000
"""Absolute ceiling on one batch; the configured limit (``event_batch_max``) is usually lower."""

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_text(value: object) -> object:
    """Timestamps are ISO-8601 text (pydantic alone would also take Unix seconds)."""
    if not isinstance(value, str) or not _ISO.match(value):
        raise ValueError("must be an ISO-8601 date and time with a time zone, e.g. 2026-12-06T11:13:29Z")
    return value


class EventObject(BaseModel):
    """``event_attributes.object``: the document the user acted on."""

    model_config = ConfigDict(extra="allow")

    object_id: Annotated[str, Field(min_length=1, max_length=256)] | StrictInt = Field(
        description="the document's id (doc_id) as served in the search answer's hits"
    )
    object_id_field: str | None = Field(default=None, max_length=MAX_ID_CHARS)


# The numbers of a position are stored as OpenSearch `integer` fields (SQLite's columns hold more): larger ones
# are refused with the request (a 422), not by the store after it was accepted.
MAX_ORDINAL = 2**31 - 1
Coordinate = Annotated[
    StrictInt | StrictFloat, Field(description="a number within ±(2^31 - 1)", ge=-MAX_ORDINAL, le=MAX_ORDINAL)
]


class EventPosition(BaseModel):
    """``event_attributes.position``: where the document was shown."""

    model_config = ConfigDict(extra="allow")

    ordinal: StrictInt | None = Field(
        default=None, ge=1, le=MAX_ORDINAL, description="rank on the result page, 1 = first"
    )
    x: Coordinate | None = None
    y: Coordinate | None = None
    page_depth: Coordinate | None = None
    scroll_depth: Coordinate | None = None


class EventAttributes(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: EventObject | None = None
    position: EventPosition | None = None


class UbiEvent(BaseModel):
    """One UBI event."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "action_name": "click",
                    "query_id": "6f1c2a52-8f0e-4bd4-9d6c-0c1d2e3f4a5b",
                    "client_id": "user-42",
                    "session_id": "c3d22be7",
                    "timestamp": "2026-12-06T11:13:29.123Z",
                    "event_attributes": {"object": {"object_id": "4983"}, "position": {"ordinal": 1}},
                }
            ]
        },
    )

    action_name: Id = Field(description="impression, click, add_to_cart, purchase, … (the configured list)")
    query_id: str = Field(pattern=QUERY_ID_PATTERN, description="the query_id of the search answer acted on")
    client_id: Id = Field(description="the user or client (the search's user_id)")
    session_id: Id | None = None
    user_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    application: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    timestamp: Annotated[AwareDatetime, BeforeValidator(_iso_text)] = Field(
        description="ISO-8601 with a time zone (Z or ±hh:mm), e.g. 2026-12-06T11:13:29.123Z"
    )
    message_type: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    message: str | None = Field(default=None, max_length=1024)
    user_query: str | None = Field(default=None, max_length=10_000)
    event_attributes: EventAttributes | None = None

    def record(self, received: datetime) -> EventRecord:
        """The event as stored: every field sent (extras too) in ``event``, the timestamp in UTC."""
        attributes = self.event_attributes
        obj = attributes.object if attributes is not None else None
        position = attributes.position if attributes is not None else None
        document = self.model_dump(mode="json", exclude_none=True)
        document["timestamp"] = iso(self.timestamp)
        return EventRecord(
            action_name=self.action_name,
            query_id=self.query_id,
            client_id=self.client_id,
            timestamp=self.timestamp.astimezone(UTC),
            received=received,
            session_id=self.session_id,
            object_id=str(obj.object_id) if obj is not None else None,
            ordinal=position.ordinal if position is not None else None,
            event=document,
        )


class EventsStored(BaseModel):
    stored: int = Field(description="events of the batch now on disk")
