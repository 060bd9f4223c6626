"""flashsale's personal-data sealing: AES-256-GCM under per-shopper data keys wrapped by
master keys from cluster.toml, with rotation and crypto-shredding (see docs/DATA.md)."""
