-- Every inserted event is queued for the webhook fan-out by the database itself, in the
-- inserting transaction, so every writer of the outbox gets it: `outbox.emit` and the
-- SQL entry point (`paymentd.create_payment`, 015) alike. `outbox.emit` queued it itself
-- until this migration; doing it here means a new SQL-side writer cannot forget it.
CREATE FUNCTION events_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgmq.send('event_fanout', jsonb_build_object('event_id', NEW.id), 0);
    RETURN NULL;
END $$;
CREATE TRIGGER events_fan_out AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_fan_out();
