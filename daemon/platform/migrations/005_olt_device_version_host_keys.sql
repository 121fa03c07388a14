-- OLT devices: a version the store bumps on every change (the OLT pool compares the row
-- before each request, so `paymentd olt update` reaches a running daemon), and the
-- device's pinned SSH host key.
--
-- host_key is an OpenSSH public key line ("ssh-ed25519 AAAA..."), recorded by
-- `paymentd olt add` / `olt update --refresh-host-key`. host_key_check = false is the
-- operator's explicit opt-out (`--no-host-key-check`), logged on every connect. Devices
-- added before this migration have no key: they connect only if `olt.known_hosts` names
-- a file that has their key, otherwise their tasks fail saying to run
-- `paymentd olt update NAME --refresh-host-key` (never a silent unchecked connect).
ALTER TABLE olt_devices
    ADD COLUMN version        bigint  NOT NULL DEFAULT 1,
    ADD COLUMN host_key       text,
    ADD COLUMN host_key_check boolean NOT NULL DEFAULT true;
