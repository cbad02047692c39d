"""Acting from the workspace (issue 10, item 4): signed-in staff record, pause, resume, replay,
start flows and publish notice revisions from pages, each action the service function the API
and the CLI call, so it writes the same rows and the same audit entries.

| page | who | module |
| --- | --- | --- |
| ``GET/POST /subjects/{subject}/record`` | support, compliance, admin | ``record`` |
| ``GET /systems``, ``POST /systems/{name}/pause|resume|replay`` | compliance, admin | ``systems`` |
| ``GET /flows``, ``POST /flows/{name}/preview|start`` | compliance, admin | ``flows`` |
| ``GET/POST /purposes/{key}/revise`` | compliance, admin | ``revise`` |

Every action follows one pattern (``_staff``):

1. GET shows the thing and its form; it changes nothing. Signed-in staff only: without a session
   the sign-in form (401), with a token of another scope 403 (system and metrics tokens: none).
2. A POST carries the form's CSRF token (signed double submit, ``web.security``): missing or wrong,
   a 403 page and nothing changed. Then the input is checked: a bad value is the form again with
   one line naming the field (422), an unknown subject, system, flow or purpose a 404 page.
3. Without ``confirm=yes`` the POST answers the confirmation step: what will happen (how many
   dead letters, how many people a revision asks), the fields carried over, one button. Nothing
   changes.
4. With it, the action runs in the request's transaction and answers 303 to the page, which says
   what was done (POST-redirect-GET: reloading it sends nothing).
5. Idempotent on a resent form: each form carries what it was made against (the subject's sequence
   number, the system's status, the newest dead letter counted, the notice version; for a flow a
   one-time value sent to Prefect as the run's idempotency key). A form sent again after it acted
   finds that moved on and writes nothing (a run: Prefect returns the same run, audited once).

``router`` lists the routes of the four modules, flat, as ``web.pages`` does.
"""

from __future__ import annotations

from fastapi import APIRouter

from consentflow.web.pages import flows, record, revise, systems

router = APIRouter(include_in_schema=False)
for _module in (record, systems, flows, revise):
    router.routes.extend(_module.router.routes)
