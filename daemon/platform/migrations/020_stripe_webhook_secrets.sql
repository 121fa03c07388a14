-- Stripe webhook endpoint signing secrets (whsec_…), encrypted with the keyring
-- (daemon/payments/stripe_secrets.py; AES-256-GCM token bound to the row id, rewritten by
-- `paymentd secrets rotate`). At most two are active: the one Stripe signs with, and the
-- one it signed with until a rotation's grace period ends. Retired rows stay for the
-- record (when, which id) and never verify again.

CREATE TABLE stripe_webhook_secrets (
    id          text PRIMARY KEY CHECK (id ~ '^sws_[0-9a-f]{16}$'),
    secret_enc  text NOT NULL,
    note        text CHECK (length(note) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
CREATE INDEX stripe_webhook_secrets_active ON stripe_webhook_secrets (created_at)
    WHERE retired_at IS NULL;
