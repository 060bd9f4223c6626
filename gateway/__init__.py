"""The shopper gateway: flashsale's public REST API.

Stateless copies run behind any load balancer. Each authenticates shoppers
(``identity``), validates bodies (``bodies``, ``cards``), coalesces writes into ledger
batches (``batcher``) sent to the Raft leader through ``cluster.client``, answers
product and stock reads from an edge cache that follows the committed-event feed
(``edge_cache``), and turns every error into problem+json (``problems``). The
application is built by ``server.create_app``; ``python -m gateway`` runs one.
"""
