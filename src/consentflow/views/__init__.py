"""The output vocabulary of both doors: one Pydantic model per object consentflow shows.

The API uses these as ``response_model`` (re-exported by ``consentflow.web.schemas``, which keeps
the input and error models); the CLI prints ``model_dump(mode="json")`` of the same models for
``--json``. So one object has one set of field names whichever door shows it, and a test
(``tests/test_views.py``) runs both doors on one database and compares them.

Invariants:

- Models are built from domain objects (``from_attributes``: the services' dataclasses and the
  SQLModel rows; an ``of`` constructor where a field comes from elsewhere), never from dicts a
  door assembles; they hold no logic beyond renaming and shaping. Ids are strings in JSON (a
  UUID is accepted and turned into its text).
- Times are aware UTC and written as ISO 8601 with ``Z`` (Pydantic's JSON form, the same as
  ``timeutil.iso_z``).
- A field renamed to agree with the other door keeps its old name as a deprecated output alias
  for one release, on the CLI only, through ``cli_json``: the alias is listed in the model's
  ``deprecated_aliases`` and in ``docs/changelog.md``.

Models here never validate input; input models live with the door that reads them.
"""

from __future__ import annotations

from consentflow.views._base import (
    Name,
    TextId,
    View,
    cli_json,
)
from consentflow.views._catalog import (
    Health,
    Me,
    PurposeDetail,
    PurposeOut,
    PurposeVersionOut,
    Revision,
    SecretRotated,
    SystemCreated,
    SystemOut,
    SystemStatusOut,
)
from consentflow.views._cohorts import (
    ChangeRowOut,
    CohortOut,
    ConsentRowOut,
    DeliveryRowOut,
    ListPageOut,
    ListRowOut,
    RequestRowOut,
    WithdrawalRowOut,
    cohort_csv,
    cohort_csv_header,
    cohort_jsonl,
)
from consentflow.views._ledger import (
    ChangeOut,
    ConsentOut,
    ConsentsOut,
    DecisionOut,
    EventOut,
    FeedData,
    FeedItemOut,
    FeedOut,
    HistoryOut,
    ImportErrorOut,
    ImportReportOut,
    RequestOut,
    RequestsOut,
    SubjectOut,
)
from consentflow.views._operations import (
    AttemptOut,
    DeliveriesOut,
    DeliveryDetail,
    DeliveryOut,
    ErasureOut,
    HealthRow,
    KeyOut,
    KeyRotationOut,
    KeysOut,
    LinkOut,
    Redelivered,
    ReplayOut,
    TokenCreated,
    TokenOut,
    TokenRevoked,
    VerifyOut,
)
from consentflow.views._subject import (
    AuditItemOut,
    ConsentNowOut,
    HistoryItemOut,
    OpenRequestOut,
    SubjectDeliveryOut,
    SubjectMatchOut,
    SubjectOverviewOut,
    SubjectSearchOut,
)
from consentflow.views._transfers import (
    ELIGIBLE_FIELDS,
    BatchCheckOut,
    BatchItemOut,
    EligibleOut,
    eligible_csv,
    eligible_jsonl,
)

__all__ = [
    "ELIGIBLE_FIELDS",
    "AttemptOut",
    "AuditItemOut",
    "BatchCheckOut",
    "BatchItemOut",
    "ChangeOut",
    "ChangeRowOut",
    "CohortOut",
    "ConsentNowOut",
    "ConsentOut",
    "ConsentRowOut",
    "ConsentsOut",
    "DecisionOut",
    "DeliveriesOut",
    "DeliveryDetail",
    "DeliveryOut",
    "DeliveryRowOut",
    "EligibleOut",
    "ErasureOut",
    "EventOut",
    "FeedData",
    "FeedItemOut",
    "FeedOut",
    "Health",
    "HealthRow",
    "HistoryItemOut",
    "HistoryOut",
    "ImportErrorOut",
    "ImportReportOut",
    "KeyOut",
    "KeyRotationOut",
    "KeysOut",
    "LinkOut",
    "ListPageOut",
    "ListRowOut",
    "Me",
    "Name",
    "OpenRequestOut",
    "PurposeDetail",
    "PurposeOut",
    "PurposeVersionOut",
    "Redelivered",
    "ReplayOut",
    "RequestOut",
    "RequestRowOut",
    "RequestsOut",
    "Revision",
    "SecretRotated",
    "SubjectDeliveryOut",
    "SubjectMatchOut",
    "SubjectOut",
    "SubjectOverviewOut",
    "SubjectSearchOut",
    "SystemCreated",
    "SystemOut",
    "SystemStatusOut",
    "TextId",
    "TokenCreated",
    "TokenOut",
    "TokenRevoked",
    "VerifyOut",
    "View",
    "WithdrawalRowOut",
    "cli_json",
    "cohort_csv",
    "cohort_csv_header",
    "cohort_jsonl",
    "eligible_csv",
    "eligible_jsonl",
]
