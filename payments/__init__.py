"""Payments: pluggable providers, a circuit breaker per provider, failover, reconciliation.

See docs/PAYMENTS.md. ``payments.service.PaymentService`` is what the gateway uses;
``payments.sandbox`` is the stand-in payment service (``flashsale payments-sandbox``).
"""
