"""The OpenAPI side of proof of work and the waiting room (gateway.admission): the
routes ``GET /challenge``, ``POST /queue``, ``GET /queue/{ticket}``, and the headers and
403 answers of the writes they guard."""

from __future__ import annotations

from typing import Any

from bots.challenge import ALGORITHM
from gateway.admission import ADMISSION_HEADER, ALTCHA_HEADER, HOLDS, WRITES

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_NO_STORE = {"Cache-Control": {"schema": {"type": "string", "enum": ["no-store"]}}}
ADMISSION_403 = (
    "Waiting room on: no valid admission token in X-Admission (problem type "
    "admission-required; its `queue` says where to queue), or one given to another shopper "
    "than the bearer token's (admission-not-yours: a place in line is personal)"
)
_UNAUTHORIZED = {"description": "no valid bearer token (unauthorized): a place in line is "
                 "the shopper's", "content": _PROBLEM}  # fmt: skip
CHALLENGE_403 = (
    "; proof of work on: no solution in X-Altcha (challenge-required), a wrong or expired "
    "one (challenge-invalid) or one used before (challenge-replayed); `challenge` says "
    "where to get a new one"
)


def _place_schema() -> dict[str, Any]:
    nullable_int = {"type": ["integer", "null"]}
    return {
        "type": "object",
        "required": ["ticket", "position", "estimated_wait_s", "admitted", "admission"],
        "properties": {
            "ticket": {"type": ["string", "null"],
                       "description": "the signed queue ticket (null: no waiting room)"},
            "position": {"type": "integer", "minimum": 0,
                         "description": "tickets to be admitted up to this one; 0: admitted"},
            "estimated_wait_s": {"type": "number", "minimum": 0},
            "admitted": {"type": "boolean"},
            "admission": {"type": ["string", "null"],
                          "description": f"once admitted: send as {ADMISSION_HEADER}"},
            "admission_expires_at_ms": nullable_int,
            "opens_at_ms": {**nullable_int, "description": "the sale's opening, if ahead"},
        },
    }  # fmt: skip


def admission_paths() -> dict[str, Any]:
    """The ``paths`` entries of the challenge and the waiting room."""
    place = {"content": {"application/json": {"schema": _place_schema()}}, "headers": _NO_STORE}
    challenge = {
        "type": "object",
        "required": ["algorithm", "challenge", "maxnumber", "salt", "signature"],
        "properties": {
            "algorithm": {"type": "string", "enum": [ALGORITHM]},
            "challenge": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "maxnumber": {"type": "integer", "description": "the difficulty (live setting)"},
            "salt": {"type": "string", "description": "carries expires and issued"},
            "signature": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "expires_at_ms": {"type": "integer"},
            "use_after_ms": {"type": "integer", "description": (
                "a write carrying the solution sooner than this counts against the client "
                "in the heuristics (min_page_to_write_ms after issue)")},
        },
    }  # fmt: skip
    return {
        "/challenge": {
            "get": {
                "summary": "A proof-of-work challenge (ALTCHA v1, SHA-256) for one hold",
                "description": (
                    f"Find n in 0..maxnumber with SHA-256(salt + n) == challenge, then send "
                    f"base64(JSON {{algorithm, challenge, number, salt, signature}}) as "
                    f"{ALTCHA_HEADER} with add-to-cart or reserve-inventory. Each solution "
                    "is accepted once, until the challenge expires."
                ),
                "responses": {
                    "200": {"description": "a challenge", "headers": _NO_STORE,
                            "content": {"application/json": {"schema": challenge}}},
                    "404": {"description": "proof of work is off", "content": _PROBLEM},
                },
            }
        },
        "/queue": {
            "post": {
                "summary": "Take a waiting-room ticket (admitted in ticket order)",
                "description": (
                    "Needs the shopper's bearer token: the ticket and its admission belong "
                    "to that shopper. Asking again while holding a live ticket (not admitted "
                    "yet, or admitted less than admission_ttl_s ago) answers that same "
                    "ticket and place, not a new one."
                ),
                "security": [{"shopperToken": []}],
                "responses": {
                    "201": {"description": "the shopper's ticket and its place", **place},
                    "200": {"description": "no waiting room: admitted, no token needed",
                            **place},
                    "401": _UNAUTHORIZED,
                    "403": {"description": "refused as a likely bot (blocked): a block "
                            "list, or the heuristics' score (account-farm: too many "
                            "shoppers queuing from one address)", "content": _PROBLEM},
                    "409": {"description": "too early: tickets are handed out from "
                            "queue_opens_before_s before the opening (queue-not-open, "
                            "Retry-After)", "content": _PROBLEM},
                },
            }
        },
        "/queue/{ticket}": {
            "get": {
                "summary": "A ticket's place, estimated wait, and admission token once in",
                "description": "Only for the shopper who took the ticket (bearer token).",
                "security": [{"shopperToken": []}],
                "parameters": [{"name": "ticket", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "the ticket's place", **place},
                    "401": _UNAUTHORIZED,
                    "403": {"description": "forged, malformed, another room's or another "
                            "shopper's ticket (ticket-invalid), or a client refused as a "
                            "likely bot (blocked)", "content": _PROBLEM},
                    "410": {"description": "the admission ran out (admission-expired): "
                            "take a new ticket", "content": _PROBLEM},
                    "503": {"description": "the shared queue is unreachable; retry",
                            "content": _PROBLEM},
                },
            }
        },
    }  # fmt: skip


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string"}}  # fmt: skip


def with_admission(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with the X-Admission/X-Altcha headers and 403 answers on guarded writes."""
    for method, path in WRITES:
        operation = paths.get(path, {}).get(method.lower())
        if operation is None:
            continue
        parameters = operation.setdefault("parameters", [])
        parameters.append(_header(ADMISSION_HEADER, "the admission token (waiting room on)"))
        text = ADMISSION_403
        if (method, path) in HOLDS:
            parameters.append(_header(ALTCHA_HEADER, "a solved challenge (proof of work on)"))
            text += CHALLENGE_403
        responses = operation.setdefault("responses", {})
        forbidden = responses.get("403")
        if forbidden is None:
            responses["403"] = {"description": text, "content": _PROBLEM}
        else:
            responses["403"] = {**forbidden, "description": f"{forbidden['description']}; {text}"}
    return paths
