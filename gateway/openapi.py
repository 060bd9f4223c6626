"""The OpenAPI 3.1 document of the shopper API, served at ``GET /openapi.json``.

Built from plain data so a test can check it against the application's route table:
every route the gateway serves is described, and so is ``POST /payment``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from gateway.admission_openapi import admission_paths, with_admission
from gateway.bodies import (
    MAX_ADDRESS_LINE_LEN,
    MAX_BODY_BYTES,
    MAX_CITY_LEN,
    MAX_EMAIL_LEN,
    MAX_NAME_LEN,
    MAX_PAYMENT_METHOD_LEN,
    MAX_POSTAL_CODE_LEN,
    MAX_REGION_LEN,
    PHONE_PATTERN,
)
from gateway.bots_openapi import INTERNAL_TOKEN_SCHEME, bots_paths, with_bot_problems
from gateway.idempotency import MAX_CLIENT_KEY_LEN
from gateway.identity import MAX_USER_ID_LEN
from gateway.problems import PROBLEM_BASE
from gateway.shop_openapi import shop_paths
from gateway.subscriptions import subscription_paths
from ledger.limits import MAX_ID_LEN, MAX_QUANTITY

API_VERSION = "1.0.0"

_STR = {"type": "string"}
_INT = {"type": "integer"}
_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}
_MONEY = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "description": "decimal, major units"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(
    props: dict[str, Any], required: list[str], *, closed: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _id(description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN, "description": description}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _problems(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON",
        401: "Missing, forged or expired bearer token",
        403: "user_id differs from the token's user",
        404: "Unknown (or not the caller's) resource",
        409: "Refused by the sale's rules (sold out, limit reached, not open, closed, ...)",
        402: "Payment declined: retry (with another payment method) before the deadline",
        410: "The hold (or the payment deadline) expired",
        413: f"Body larger than {MAX_BODY_BYTES} bytes",
        422: "Invalid input (also: a card number in the body, a reused Idempotency-Key)",
        503: "No leader, outcome unknown (retry with the same Idempotency-Key) or overloaded",
    }
    return {
        str(s): {
            "description": text[s],
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for s in statuses
    }


def _ok(description: str, schema_name: str, *, indexed: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": _json_content(_ref(schema_name)),
    }
    if indexed:
        answer["headers"] = {
            "X-Ledger-Index": {
                "description": "ledger log index the answer reflects",
                "schema": _INT,
            }
        }
    return answer


_BEARER: list[dict[str, list[str]]] = [{"shopperToken": []}]
_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry return the first result. Generated when absent and always echoed "
        "in the response; scoped to the shopper."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CLIENT_KEY_LEN},
}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _id(name)}


def _write(summary: str, request: str, ok: dict[str, Any], *problems: int) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": _BEARER,
        "parameters": [_IDEMPOTENCY],
        "requestBody": {"required": True, "content": _json_content(_ref(request))},
        "responses": {"200": ok, **_problems(*problems)},
    }


def _schemas() -> dict[str, Any]:
    user_id = {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_LEN}
    reserve_request = _obj(
        {
            "user_id": user_id,
            "product_id": _id("product"),
            "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
        },
        ["user_id", "product_id", "quantity"],
        closed=True,
    )
    hold_placed = _obj(
        {
            "success": {"type": "boolean", "const": True},
            "cart_id": _STR,
            "hold_id": _STR,
            "product_id": _STR,
            "quantity": _INT,
            "reservation_expiry": _TIME,
            "expires_at_ms": _INT,
            "ledger_index": _INT,
        },
        ["success", "cart_id", "reservation_expiry", "hold_id", "expires_at_ms"],
    )
    address = _obj(
        {
            "address_line1": {"type": "string", "minLength": 1, "maxLength": MAX_ADDRESS_LINE_LEN},
            "address_line2": {"type": "string", "maxLength": MAX_ADDRESS_LINE_LEN},
            "city": {"type": "string", "minLength": 1, "maxLength": MAX_CITY_LEN},
            "region": {"type": "string", "maxLength": MAX_REGION_LEN},
            "postal_code": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_POSTAL_CODE_LEN,
                "pattern": "^[A-Za-z0-9][A-Za-z0-9 -]*$",
            },
            "country": {"type": "string", "pattern": "^[A-Za-z]{2}$", "description": "ISO 3166-1"},
            "name": {"type": "string", "maxLength": MAX_NAME_LEN},
        },
        ["address_line1", "city", "postal_code", "country"],
        closed=True,
    )
    payment_method = {
        "type": "string",
        "pattern": "^pm_[A-Za-z0-9_]+$",
        "maxLength": MAX_PAYMENT_METHOD_LEN,
        "description": "a payment method token from the payment provider; never a card number",
    }
    checkout_request = _obj(
        {
            "user_id": user_id,
            "cart_id": _id("cart"),
            "payment_method": payment_method,
            "shipping_address": _ref("ShippingAddress"),
            "email": {"type": "string", "format": "email", "maxLength": MAX_EMAIL_LEN},
            "phone": {
                "type": "string",
                "pattern": "^" + PHONE_PATTERN.pattern + "$",
                "description": "E.164 (+15550001234): order notices by SMS",
            },
        },
        ["user_id", "cart_id", "payment_method", "shipping_address"],
        closed=True,
    )
    line = _obj(
        {
            "product_id": _STR,
            "quantity": _INT,
            "hold_id": _STR,
            "unit_price": _MONEY,
            "unit_price_minor": _INT,
        },
        ["product_id", "quantity"],
    )
    order_placed = _obj(
        {
            "order_id": _STR,
            "cart_id": _STR,
            "payment_status": {"type": "string", "enum": ["pending", "completed", "failed"]},
            "inventory_status": {"type": "string", "enum": ["confirmed", "failed"]},
            "amount": _MONEY,
            "amount_minor": _INT,
            "currency": _STR,
            "pay_by": _TIME,
            "pay_by_ms": _INT,
            "lines": {"type": "array", "items": _ref("OrderLine")},
            "ledger_index": _INT,
        },
        ["order_id", "payment_status", "inventory_status", "amount", "pay_by"],
    )
    order = _obj(
        {
            "order_id": _STR,
            "cart_id": _STR,
            "user_id": _STR,
            "status": {"type": "string", "enum": ["pending", "completed", "failed"]},
            "payment_status": {"type": "string", "enum": ["pending", "completed", "failed"]},
            "inventory_status": {"type": "string", "enum": ["confirmed", "failed"]},
            "amount": _MONEY,
            "amount_minor": _INT,
            "currency": _STR,
            "lines": {"type": "array", "items": _ref("OrderLine")},
            "created_at": _TIME,
            "pay_by": _TIME,
            "payment_method": _STR,
            "transaction_id": {"type": ["string", "null"]},
            "payment_attempts": _INT,
            "failure": {"type": ["string", "null"]},
            "ledger_index": _INT,
        },
        ["order_id", "status", "payment_status", "amount"],
    )
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    nullable_int = {"type": ["integer", "null"]}
    product = _obj(
        {
            "product_id": _STR,
            "name": _STR,
            "price": _MONEY,
            "price_minor": _INT,
            "currency": _STR,
            "available_quantity": _INT,
            "total_stock": _INT,
            "opens_at": nullable_time,
            "opens_at_ms": nullable_int,
            "closes_at": nullable_time,
            "closes_at_ms": nullable_int,
            "per_user_limit": nullable_int,
            "hold_ttl_ms": _INT,
        },
        ["product_id", "name", "price", "available_quantity"],
    )
    hold = _obj(
        {
            "hold_id": _STR,
            "product_id": _STR,
            "quantity": _INT,
            "status": {"type": "string", "enum": ["active", "released", "expired", "ordered"]},
            "reservation_expiry": _TIME,
            "expires_at_ms": _INT,
        },
        ["hold_id", "product_id", "quantity", "status"],
    )
    return {
        "Problem": _obj(
            {
                "type": {
                    "type": "string",
                    "format": "uri",
                    "examples": [PROBLEM_BASE + "sold-out"],
                },
                "title": _STR,
                "status": _INT,
                "detail": _STR,
                "instance": _STR,
            },
            ["type", "title", "status"],
        ),
        "ReserveRequest": reserve_request,
        "HoldPlaced": hold_placed,
        "ShippingAddress": address,
        "CheckoutRequest": checkout_request,
        "OrderLine": line,
        "OrderPlaced": order_placed,
        "Order": order,
        "Product": product,
        "ProductList": _obj(
            {"products": {"type": "array", "items": _ref("Product")}, "ledger_index": _INT},
            ["products"],
        ),
        "Inventory": _obj(
            {
                "product_id": _STR,
                "available_quantity": _INT,
                "total_stock": _INT,
                "reserved_quantity": _INT,
                "sold_quantity": _INT,
                "ledger_index": _INT,
            },
            ["product_id", "available_quantity"],
        ),
        "Hold": hold,
        "Cart": _obj(
            {
                "cart_id": _STR,
                "user_id": _STR,
                "status": {"type": "string", "enum": ["open", "ordered"]},
                "order_id": {"type": ["string", "null"]},
                "items": {"type": "array", "items": _ref("Hold")},
                "ledger_index": _INT,
            },
            ["cart_id", "status", "items"],
        ),
        "HoldReleased": _obj(
            {
                "success": {"type": "boolean", "const": True},
                "cart_id": _STR,
                "hold_id": _STR,
                "product_id": _STR,
                "quantity": _INT,
                "ledger_index": _INT,
            },
            ["success", "hold_id"],
        ),
        "PaymentRequest": _obj(
            {
                "order_id": _id("order"),
                "payment_method": payment_method,
                "amount": {
                    "type": ["string", "number"],
                    "description": "must equal the order's amount (decimal, major units)",
                },
            },
            ["order_id", "payment_method", "amount"],
            closed=True,
        ),
        "PaymentResult": _obj(
            {
                "success": {"type": "boolean"},
                "transaction_id": _STR,
                "payment_status": {"type": "string", "enum": ["pending", "completed", "failed"]},
                "order_id": _STR,
                "order_status": {"type": "string", "enum": ["pending", "completed", "failed"]},
                "provider": _STR,
                "amount": _MONEY,
                "amount_minor": _INT,
                "currency": _STR,
                "payment_attempts": _INT,
                "card_last4": _STR,
            },
            ["success", "transaction_id", "payment_status"],
        ),
        "WebhookReceipt": _obj(
            {
                "received": {"type": "boolean"},
                "settled": {
                    "type": "string",
                    "enum": ["recorded", "refunded", "refund_due", "stale", "ignored"],
                },
            },
            ["received"],
        ),
        "Health": _obj({"ok": {"type": "boolean"}, "gateway": _STR}, ["ok"]),
        "Ready": _obj(
            {
                "ready": {"type": "boolean"},
                "leader": {"type": ["string", "null"]},
                "cache_caught_up": {"type": "boolean"},
                "cache_index": _INT,
                "feed_last_index": _INT,
            },
            ["ready"],
        ),
    }


def _payment_operation() -> dict[str, Any]:
    operation = _write(
        "Pay an order through the configured payment providers",
        "PaymentRequest",
        _ok("paid (also the answer to a repeat for a paid order: one charge)", "PaymentResult"),
        400, 401, 402, 403, 404, 409, 410, 413, 422, 503,
    )
    operation["responses"]["202"] = _ok(
        "outcome unknown (provider timeout): the order stays pending and is reconciled",
        "PaymentResult",
    )
    return operation


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once; treat as read-only)."""
    reserve_problems = (400, 401, 403, 404, 409, 413, 422, 503)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flashsale shopper API",
            "version": API_VERSION,
            "description": (
                "Errors are application/problem+json (RFC 9457) with a stable `type` under "
                f"{PROBLEM_BASE}. Every write accepts an Idempotency-Key header."
            ),
        },
        "components": {
            "securitySchemes": {
                "shopperToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "issued by `flashsale token USER_ID`",
                },
                "internalToken": INTERNAL_TOKEN_SCHEME,
            },
            "schemas": _schemas(),
        },
        "paths": with_bot_problems(with_admission({
            "/add-to-cart": {
                "post": _write(
                    "Hold units for the shopper (joins their open cart)",
                    "ReserveRequest",
                    _ok("the hold", "HoldPlaced", indexed=True),
                    *reserve_problems,
                )
            },
            "/reserve-inventory": {
                "post": _write(
                    "Hold units for the shopper (same as /add-to-cart)",
                    "ReserveRequest",
                    _ok("the hold", "HoldPlaced", indexed=True),
                    *reserve_problems,
                )
            },
            "/checkout": {
                "post": _write(
                    "Turn the cart's active holds into an order awaiting payment",
                    "CheckoutRequest",
                    _ok("the order", "OrderPlaced", indexed=True),
                    400, 401, 403, 404, 409, 410, 413, 422, 503,
                )
            },
            "/payment": {
                "post": _payment_operation(),
            },
            "/webhooks/{provider}": {
                "post": {
                    "summary": "A payment provider's signed event about a charge",
                    "parameters": [
                        {
                            "name": "provider",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": ["stripe", "paypal"]},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": _ok("the event was settled (or ignored)", "WebhookReceipt"),
                        "400": {
                            "description": "Unsigned, forged or stale webhook",
                            "content": {
                                "application/problem+json": {"schema": _ref("Problem")}
                            },
                        },
                        **_problems(503),
                    },
                }
            },
            "/inventory/{product_id}": {
                "get": {
                    "summary": "Units available now (from the gateway's edge cache)",
                    "parameters": [_path_param("product_id")],
                    "responses": {
                        "200": _ok("stock", "Inventory", indexed=True),
                        **_problems(404, 422, 503),
                    },
                }
            },
            "/products": {
                "get": {
                    "summary": "Every product with its terms and live stock",
                    "responses": {
                        "200": _ok("products", "ProductList", indexed=True),
                        **_problems(503),
                    },
                }
            },
            "/products/{product_id}": {
                "get": {
                    "summary": "One product: price, sale window, per-shopper limit, available",
                    "parameters": [_path_param("product_id")],
                    "responses": {
                        "200": _ok("the product", "Product", indexed=True),
                        **_problems(404, 422, 503),
                    },
                }
            },
            "/cart/{cart_id}": {
                "get": {
                    "summary": "The caller's cart and its holds",
                    "security": _BEARER,
                    "parameters": [_path_param("cart_id")],
                    "responses": {
                        "200": _ok("the cart", "Cart", indexed=True),
                        **_problems(401, 404, 422, 503),
                    },
                }
            },
            "/cart/{cart_id}/items/{hold_id}": {
                "delete": {
                    "summary": "Give a hold back before it expires",
                    "security": _BEARER,
                    "parameters": [_path_param("cart_id"), _path_param("hold_id"), _IDEMPOTENCY],
                    "responses": {
                        "200": _ok("the released hold", "HoldReleased", indexed=True),
                        **_problems(401, 404, 409, 410, 422, 503),
                    },
                }
            },
            "/orders/{order_id}": {
                "get": {
                    "summary": "The caller's order (no personal details)",
                    "security": _BEARER,
                    "parameters": [_path_param("order_id")],
                    "responses": {
                        "200": _ok("the order", "Order", indexed=True),
                        **_problems(401, 404, 422, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": _ok("alive", "Health")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: a leader is known and the edge cache is caught up",
                    "responses": {"200": _ok("ready", "Ready"), **_problems(503)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition",
                            "content": {"text/plain": {"schema": _STR}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            **shop_paths(),
            **subscription_paths(),
            **bots_paths(),
            **admission_paths(),
        })),
    }
