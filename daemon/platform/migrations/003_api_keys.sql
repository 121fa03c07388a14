-- API keys for the HTTP APIs: "pd_<id>_<secret>", of which only the SHA-256 of the secret
-- is kept (daemon/platform/auth.py says why not a slow password hash).
CREATE TABLE api_keys (
    id            text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,99}$'),
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    scopes        text[] NOT NULL CHECK (cardinality(scopes) > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Refreshed at most once a minute per key, so using a key costs no write per request.
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
