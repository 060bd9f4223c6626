"""flashsale's order snapshots: the committed-event feed, written exactly once into
SQLite or PostgreSQL tables that operators, analysts and the console query."""
