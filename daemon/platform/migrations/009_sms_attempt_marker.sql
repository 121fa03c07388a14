-- The attempt marker for SMS sends (daemon/notifications/recovery.py). Before a provider
-- is called the row is marked: provider, attempts (already there), attempt_started_at,
-- and unconfirmed = true. A definite answer clears unconfirmed; a crash (the row stays
-- 'sending') or an answer that may hide an acceptance (a timeout after the request went
-- out) leaves it set, and a provider that lists what it sent (Twilio) is asked before
-- the SMS goes out again.
ALTER TABLE sms_messages
    ADD COLUMN attempt_started_at timestamptz,
    ADD COLUMN unconfirmed boolean NOT NULL DEFAULT false;

-- A provider's reference is claimed by one row at most; the lookup excludes claimed ones.
CREATE INDEX sms_messages_provider_ref ON sms_messages (provider, provider_ref)
    WHERE provider_ref IS NOT NULL;
