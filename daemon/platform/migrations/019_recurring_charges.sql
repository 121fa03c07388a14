-- Recurring payments' charges (daemon/payments/recurring.py): each paid invoice of a
-- recurring payment's subscription is a payment of its own, kind 'recurring_charge',
-- linked to the recurring payment it belongs to. Its provider object is the invoice
-- (provider_object 'invoice', provider_ref in_…), so the unique index on
-- (provider, provider_ref) makes one charge per invoice: a replayed or re-fetched
-- event can never record an invoice twice.

ALTER TABLE payments
    ADD COLUMN parent_payment_id text REFERENCES payments (id),
    DROP CONSTRAINT payments_kind_check,
    ADD CONSTRAINT payments_kind_check
        CHECK (kind IN ('one_time', 'recurring', 'recurring_charge')),
    ADD CONSTRAINT payments_charge_has_parent
        CHECK ((kind = 'recurring_charge') = (parent_payment_id IS NOT NULL)),
    DROP CONSTRAINT payments_provider_object_check,
    ADD CONSTRAINT payments_provider_object_check
        CHECK (provider_object IN ('payment_intent', 'checkout_session', 'payment_link', 'invoice'));

CREATE INDEX payments_parent_seq ON payments (parent_payment_id, seq)
    WHERE parent_payment_id IS NOT NULL;
