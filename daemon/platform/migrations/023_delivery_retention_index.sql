-- Retention deletes finished deliveries by age (wiring.retention_targets); without this
-- each batch would scan the whole table.
CREATE INDEX webhook_deliveries_finished_at
    ON webhook_deliveries (finished_at) WHERE state <> 'pending';
