-- The order snapshot (SPEC.md's Inventory, Orders, Cart, Payment, plus what the design
-- needs) and the personal-data keys. Money in integer minor units, times in integer
-- milliseconds since the Unix epoch, ledger_index = the ledger entry that last wrote a row.

-- The last ledger index applied: written in the same transaction as the rows it covers.
CREATE TABLE applied_index (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    ledger_index BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    rebuilt_from_index BIGINT NOT NULL DEFAULT 0,
    updated_at_ms BIGINT NOT NULL
);
INSERT INTO applied_index (id, ledger_index, at_ms, updated_at_ms) VALUES (1, 0, 0, 0);

CREATE TABLE inventory (
    product_id TEXT PRIMARY KEY,
    product_name TEXT NOT NULL,
    available_quantity BIGINT NOT NULL,
    reserved_quantity BIGINT NOT NULL,
    sold_quantity BIGINT NOT NULL,
    total_stock BIGINT NOT NULL,
    price_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    opens_at_ms BIGINT,
    closes_at_ms BIGINT,
    per_user_limit BIGINT,
    hold_ttl_ms BIGINT NOT NULL,
    last_updated_ms BIGINT NOT NULL,
    ledger_index BIGINT NOT NULL
);

CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    cart_id TEXT NOT NULL,
    order_status TEXT NOT NULL CHECK (order_status IN ('pending', 'completed', 'failed')),
    payment_status TEXT NOT NULL CHECK (payment_status IN ('pending', 'paid', 'failed')),
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    failure TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    pay_by_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    pii_sealed TEXT,
    pii_key_id TEXT,
    ledger_index BIGINT NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id);

CREATE TABLE order_lines (
    order_id TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    product_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    unit_price_minor BIGINT NOT NULL,
    hold_id TEXT NOT NULL,
    ledger_index BIGINT NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX order_lines_by_product ON order_lines (product_id);

-- One row per hold: a cart is its rows with the same cart_id. 'ended': released or
-- expired while the writer was behind the feed (a rebuild cannot tell which).
CREATE TABLE cart (
    hold_id TEXT PRIMARY KEY,
    cart_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    cart_expiry_ms BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'released', 'expired', 'ordered', 'ended')),
    order_id TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    ledger_index BIGINT NOT NULL
);
CREATE INDEX cart_by_cart ON cart (cart_id);
CREATE INDEX cart_by_user ON cart (user_id);
CREATE INDEX cart_by_status ON cart (status);

-- One row per order: the payment it awaits or got. No card data: the method is the
-- gateway's token, the provider's reference is its transaction id.
CREATE TABLE payment (
    payment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    provider TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    payment_status TEXT NOT NULL CHECK (payment_status IN ('pending', 'completed', 'failed')),
    declined_attempts BIGINT NOT NULL,
    failure TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    ledger_index BIGINT NOT NULL
);
CREATE INDEX payment_by_user ON payment (user_id);

-- The double-entry journal of stock: summing a product's moves gives its balances.
-- seq = -1 marks the adjustment made when the writer rebuilt from a ledger snapshot.
CREATE TABLE stock_moves (
    ledger_index BIGINT NOT NULL,
    seq INTEGER NOT NULL,
    move_no INTEGER NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    product_id TEXT NOT NULL,
    from_bucket TEXT NOT NULL,
    to_bucket TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    hold_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    PRIMARY KEY (ledger_index, seq, move_no)
);
CREATE INDEX stock_moves_by_product ON stock_moves (product_id);

-- Each shopper's data key, wrapped by a master key (pii.aead). Deleting the row
-- destroys the key: the shopper's sealed data is unreadable everywhere (GDPR erasure).
CREATE TABLE data_keys (
    user_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    master_key_id TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    created_at_ms BIGINT NOT NULL,
    wrapped_at_ms BIGINT NOT NULL
);
CREATE INDEX data_keys_by_master ON data_keys (master_key_id);

CREATE TABLE erasures (
    erasure_id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    erased_at_ms BIGINT NOT NULL
);
CREATE INDEX erasures_by_user ON erasures (user_id);
CREATE INDEX erasures_by_key ON erasures (key_id);
