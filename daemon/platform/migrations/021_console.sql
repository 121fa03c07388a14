-- The operator console (daemon/console/): operator accounts and signed-in sessions.
-- Passwords are stored as scrypt hashes (daemon/console/accounts.py); a session is an
-- opaque random token of which only SHA-256 is kept, so a copy of this table signs no
-- one in.
CREATE TABLE console_operators (
    name          text PRIMARY KEY,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,
    last_login_at timestamptz
);

CREATE TABLE console_sessions (
    token_sha256 bytea PRIMARY KEY,
    -- NULL: signed in with http.admin_token; admin_tag then holds SHA-256 of that token,
    -- so changing the token in the config ends those sessions.
    operator     text REFERENCES console_operators (name) ON DELETE CASCADE,
    admin_tag    bytea,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    CHECK ((operator IS NULL) <> (admin_tag IS NULL))
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

-- The overview lists the last failures on every load: without these, finding the five
-- newest failed tasks walks the whole task log backwards when failures are rare.
CREATE INDEX reconnect_tasks_failed ON reconnect_tasks (id DESC) WHERE state = 'failed';
