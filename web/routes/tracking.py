"""The customer's view of one delivery, opened by its tracking token (no bearer token:
the link is the credential, and it opens nothing else)."""

from __future__ import annotations

from aiohttp import web

from tracker.reveal import TrackView
from web import tracking
from web.api import Api, Param, json_response
from web.services import services

api = Api()

# Personal data behind a secret link: never cached, never passed on as a referrer.
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


@api.get(
    "/api/v1/track/{token}",
    summary="A delivery as its customer sees it: state, window, ETA and, when close, "
    "the vehicle (before that only a coarse H3 cell)",
    role=None,
    tag="tracking",
    params=[
        Param(
            "token",
            "the customer's tracking token, given once when the delivery was created",
            required=True,
            where="path",
        )
    ],
    response=TrackView,
    errors=(404, 429),
)
async def track(request: web.Request) -> web.Response:
    tracked = await tracking.open_token(services(request), request.match_info["token"])
    return json_response(tracking.view(tracked, services(request).settings), headers=_HEADERS)
