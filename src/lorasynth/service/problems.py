"""RFC 9457 problem details: every error the service answers is `application/problem+json`.

`type` is a relative URI under /problems/ naming the kind of problem (documented in
service/README.md); `title` is fixed per type, `detail` says what happened in this request.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from starlette.responses import Response

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int,
    detail: str,
    type_: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> Response:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {
        "type": f"/problems/{type_}" if type_ else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        **({"instance": instance} if instance else {}),
        **extra,
    }
    return Response(
        json.dumps(body), status_code=status, media_type=MEDIA_TYPE, headers=headers or {}
    )
