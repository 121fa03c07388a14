-- Publishable keys for the embeddable checkout (daemon/checkout/keys.py): public
-- identifiers a merchant's web page carries, each allowed to ask for checkout links
-- only from the listed browser origins ("https://shop.example", no path). Not secrets:
-- stored as they are, shown as often as asked.
CREATE TABLE publishable_keys (
    id              text PRIMARY KEY CHECK (id ~ '^pk_[0-9a-f]{24}$'),
    name            text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,99}$'),
    allowed_origins text[] NOT NULL CHECK (cardinality(allowed_origins) > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
