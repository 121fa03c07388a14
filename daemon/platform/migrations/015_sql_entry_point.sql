-- The SQL entry point for applications that share the database (docs/sql-api.md):
--   paymentd.create_payment(...)       inside the caller's own transaction;
--   CALL paymentd.create_payment_sync  commits, then waits for the client secret / URL;
--   paymentd.payment_status(id)        what the processor made of one's own payment.
-- They do what PaymentService.create does (daemon/payments/service.py, store.insert):
-- the same validation with the same messages, the payments row, its history row, the
-- payment.created outbox event and the `payments` queue message, all in one transaction,
-- so the payment exists and is queued exactly when the caller's transaction commits.
-- tests/test_payments_sql.py checks both paths agree (validation, row, event, message).

CREATE SCHEMA paymentd;
REVOKE ALL ON SCHEMA paymentd FROM PUBLIC;

-- What the daemon's config says, for SQL callers: written by the daemon at every start
-- (daemon/payments/sql_api.py publish_settings). NULL provider: no daemon has started
-- on this database yet, which the functions treat like provider "none".
CREATE TABLE paymentd.settings (
    singleton                boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    provider                 text CHECK (provider IN ('mock', 'stripe', 'none')),
    pending_ttl_seconds      double precision NOT NULL DEFAULT 86400 CHECK (pending_ttl_seconds > 0),
    idempotency_ttl_seconds  double precision NOT NULL DEFAULT 86400
                                 CHECK (idempotency_ttl_seconds > 0),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
INSERT INTO paymentd.settings DEFAULT VALUES;

-- ISO 4217 exponents. daemon/payments/currency.py (the iso4217 package) is the source:
-- this snapshot lets SQL callers work before any daemon started, the daemon re-syncs the
-- table at start, and a test fails if this list and currency.EXPONENTS differ.
CREATE TABLE paymentd.currencies (
    code     text PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    exponent smallint NOT NULL CHECK (exponent BETWEEN 0 AND 4)
);
INSERT INTO paymentd.currencies (code, exponent) VALUES
    ('AED', 2), ('AFN', 2), ('ALL', 2), ('AMD', 2), ('AOA', 2), ('ARS', 2), ('AUD', 2), ('AWG', 2),
    ('AZN', 2), ('BAM', 2), ('BBD', 2), ('BDT', 2), ('BHD', 3), ('BIF', 0), ('BMD', 2), ('BND', 2),
    ('BOB', 2), ('BOV', 2), ('BRL', 2), ('BSD', 2), ('BTN', 2), ('BWP', 2), ('BYN', 2), ('BZD', 2),
    ('CAD', 2), ('CDF', 2), ('CHE', 2), ('CHF', 2), ('CHW', 2), ('CLF', 4), ('CLP', 0), ('CNY', 2),
    ('COP', 2), ('COU', 2), ('CRC', 2), ('CUP', 2), ('CVE', 2), ('CZK', 2), ('DJF', 0), ('DKK', 2),
    ('DOP', 2), ('DZD', 2), ('EGP', 2), ('ERN', 2), ('ETB', 2), ('EUR', 2), ('FJD', 2), ('FKP', 2),
    ('GBP', 2), ('GEL', 2), ('GHS', 2), ('GIP', 2), ('GMD', 2), ('GNF', 0), ('GTQ', 2), ('GYD', 2),
    ('HKD', 2), ('HNL', 2), ('HTG', 2), ('HUF', 2), ('IDR', 2), ('ILS', 2), ('INR', 2), ('IQD', 3),
    ('IRR', 2), ('ISK', 0), ('JMD', 2), ('JOD', 3), ('JPY', 0), ('KES', 2), ('KGS', 2), ('KHR', 2),
    ('KMF', 0), ('KPW', 2), ('KRW', 0), ('KWD', 3), ('KYD', 2), ('KZT', 2), ('LAK', 2), ('LBP', 2),
    ('LKR', 2), ('LRD', 2), ('LSL', 2), ('LYD', 3), ('MAD', 2), ('MDL', 2), ('MGA', 2), ('MKD', 2),
    ('MMK', 2), ('MNT', 2), ('MOP', 2), ('MRU', 2), ('MUR', 2), ('MVR', 2), ('MWK', 2), ('MXN', 2),
    ('MXV', 2), ('MYR', 2), ('MZN', 2), ('NAD', 2), ('NGN', 2), ('NIO', 2), ('NOK', 2), ('NPR', 2),
    ('NZD', 2), ('OMR', 3), ('PAB', 2), ('PEN', 2), ('PGK', 2), ('PHP', 2), ('PKR', 2), ('PLN', 2),
    ('PYG', 0), ('QAR', 2), ('RON', 2), ('RSD', 2), ('RUB', 2), ('RWF', 0), ('SAR', 2), ('SBD', 2),
    ('SCR', 2), ('SDG', 2), ('SEK', 2), ('SGD', 2), ('SHP', 2), ('SLE', 2), ('SOS', 2), ('SRD', 2),
    ('SSP', 2), ('STN', 2), ('SVC', 2), ('SYP', 2), ('SZL', 2), ('THB', 2), ('TJS', 2), ('TMT', 2),
    ('TND', 3), ('TOP', 2), ('TRY', 2), ('TTD', 2), ('TWD', 2), ('TZS', 2), ('UAH', 2), ('UGX', 0),
    ('USD', 2), ('USN', 2), ('UYI', 0), ('UYU', 2), ('UYW', 4), ('UZS', 2), ('VED', 2), ('VES', 2),
    ('VND', 0), ('VUV', 0), ('WST', 2), ('XAD', 2), ('XAF', 0), ('XCD', 2), ('XCG', 2), ('XOF', 0),
    ('XPF', 0), ('YER', 2), ('ZAR', 2), ('ZMW', 2), ('ZWG', 2);

-- One validation error: SQLSTATE 22023 (invalid_parameter_value), the service's own
-- message, the problem type in DETAIL and the field in HINT.
CREATE FUNCTION paymentd._refuse(kind text, message text, field text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = message,
        DETAIL = 'urn:paymentd:problem:' || kind, HINT = 'field: ' || field;
END $$;

CREATE FUNCTION paymentd.create_payment(
    amount              bigint,
    currency            text,
    description         text DEFAULT NULL,
    customer            text DEFAULT NULL,
    metadata            jsonb DEFAULT '{}',
    capture_method      text DEFAULT 'automatic',
    kind                text DEFAULT 'one_time',
    "interval"          text DEFAULT NULL,
    method              text DEFAULT NULL,  -- intent, or hosted_checkout if recurring
    status_callback_url text DEFAULT NULL,
    uisp_client_id      bigint DEFAULT NULL,
    request_id          text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
AS $$
#variable_conflict use_variable
DECLARE
    max_amount constant bigint := 1000000000000;  -- service.MAX_AMOUNT
    v_code     text;
    v_meta     jsonb := coalesce(create_payment.metadata, '{}'::jsonb);
    v_key      text;
    v_value    jsonb;
    v_cfg      record;
    v_scope    text := 'sql:' || session_user;
    v_id       text;
    v_params   jsonb;
    v_digest   bytea;
    v_held     record;
    v_row      payments%ROWTYPE;
    v_netloc   text;
BEGIN
    -- The HTTP API's default (daemon/payments/routes.py): a recurring payment is hosted.
    method := coalesce(method, CASE WHEN kind = 'recurring' THEN 'hosted_checkout' ELSE 'intent' END);
    -- Validation: service.validate's checks, in its order, with its messages.
    IF amount IS NULL THEN
        PERFORM paymentd._refuse('invalid-amount', 'amount must be an integer (minor units)', 'amount');
    ELSIF amount <= 0 THEN
        PERFORM paymentd._refuse('invalid-amount', format('amount must be positive, got %s', amount), 'amount');
    ELSIF amount > max_amount THEN
        PERFORM paymentd._refuse('invalid-amount', format('amount must be at most %s', max_amount), 'amount');
    END IF;
    IF currency IS NULL OR currency !~ '^[A-Za-z]{3}$' THEN
        PERFORM paymentd._refuse('invalid-currency', format(
            'currency must be a three-letter ISO 4217 code, got %s',
            CASE WHEN currency IS NULL THEN 'None' ELSE quote_literal(currency) END), 'currency');
    END IF;
    SELECT c.code INTO v_code FROM paymentd.currencies c WHERE c.code = upper(currency);
    IF v_code IS NULL THEN
        PERFORM paymentd._refuse('invalid-currency', format(
            'unknown or non-payable ISO 4217 currency %s', quote_literal(upper(currency))), 'currency');
    END IF;
    IF method IS NULL OR method NOT IN ('intent', 'hosted_checkout', 'payment_link') THEN
        PERFORM paymentd._refuse('invalid-request', 'method must be one of intent, hosted_checkout, payment_link', 'method');
    END IF;
    IF kind IS NULL OR kind NOT IN ('one_time', 'recurring') THEN
        PERFORM paymentd._refuse('invalid-request', 'kind must be one of one_time, recurring', 'kind');
    END IF;
    IF capture_method IS NULL OR capture_method NOT IN ('automatic', 'manual') THEN
        PERFORM paymentd._refuse('invalid-request', 'capture_method must be automatic or manual', 'capture_method');
    END IF;
    IF kind = 'recurring' THEN
        IF "interval" IS NULL OR "interval" NOT IN ('day', 'week', 'month', 'year') THEN
            PERFORM paymentd._refuse('invalid-request', 'a recurring payment needs interval: one of day, week, month, year', 'interval');
        END IF;
        IF method = 'intent' THEN
            PERFORM paymentd._refuse('invalid-request', 'a recurring payment needs method hosted_checkout or payment_link', 'method');
        END IF;
        IF capture_method = 'manual' THEN
            PERFORM paymentd._refuse('invalid-request', 'a recurring payment cannot be captured manually', 'capture_method');
        END IF;
    ELSIF "interval" IS NOT NULL THEN
        PERFORM paymentd._refuse('invalid-request', 'interval is only for kind recurring', 'interval');
    END IF;
    IF jsonb_typeof(v_meta) <> 'object' THEN
        PERFORM paymentd._refuse('invalid-request', 'metadata keys are 1-40 characters, values strings of at most 500', 'metadata');
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(v_meta)) > 50 THEN
        PERFORM paymentd._refuse('invalid-request', 'metadata holds at most 50 keys', 'metadata');
    END IF;
    FOR v_key, v_value IN SELECT e.key, e.value FROM jsonb_each(v_meta) e LOOP
        IF jsonb_typeof(v_value) <> 'string' OR length(v_key) NOT BETWEEN 1 AND 40
                OR length(v_value #>> '{}') > 500 THEN
            PERFORM paymentd._refuse('invalid-request', 'metadata keys are 1-40 characters, values strings of at most 500', 'metadata');
        END IF;
    END LOOP;
    -- urlsplit's rule: an http(s) scheme (any case) and a non-empty network location
    -- (urlsplit refuses an unbalanced IPv6 bracket).
    v_netloc := substring(status_callback_url from '^[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)');
    IF status_callback_url IS NOT NULL AND (coalesce(v_netloc, '') = ''
            OR (strpos(v_netloc, '[') > 0) <> (strpos(v_netloc, ']') > 0)
            OR length(status_callback_url) > 2000) THEN
        PERFORM paymentd._refuse('invalid-request', 'status_callback_url must be an http(s) URL', 'status_callback_url');
    END IF;
    IF uisp_client_id IS NOT NULL AND uisp_client_id <= 0 THEN
        PERFORM paymentd._refuse('invalid-request', 'uisp_client_id must be a positive integer', 'uisp_client_id');
    END IF;
    IF description IS NOT NULL AND length(description) > 1000 THEN
        PERFORM paymentd._refuse('invalid-request', 'description is at most 1000 characters', 'description');
    END IF;
    IF customer IS NOT NULL AND length(customer) NOT BETWEEN 1 AND 200 THEN
        PERFORM paymentd._refuse('invalid-request', 'customer is 1-200 characters', 'customer');
    END IF;

    SELECT s.provider, s.pending_ttl_seconds, s.idempotency_ttl_seconds INTO v_cfg
        FROM paymentd.settings s;
    IF v_cfg.provider IS NULL OR v_cfg.provider = 'none' THEN
        RAISE EXCEPTION USING ERRCODE = 'PD503',
            MESSAGE = 'payments.provider is "none": set it to stripe or mock',
            DETAIL = 'urn:paymentd:problem:payments-disabled';
    END IF;

    v_id := 'pay_' || left(encode(sha256(convert_to(
        gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex'), 24);

    -- Idempotency for SQL callers, scoped by the login role ("sql:<role>"), in the
    -- caller's transaction: the key is claimed first (a concurrent twin waits on it and
    -- then sees the outcome), and finished with the payment, so both commit or neither.
    IF request_id IS NOT NULL THEN
        IF length(request_id) NOT BETWEEN 1 AND 255 OR request_id !~ '^[ -~]+$' THEN
            PERFORM paymentd._refuse('invalid-request', 'request_id must be 1-255 printable ASCII characters', 'request_id');
        END IF;
        v_params := jsonb_build_object(
            'amount', amount, 'currency', v_code, 'method', method, 'kind', kind,
            'interval', "interval", 'capture_method', capture_method,
            'description', description, 'customer', customer, 'metadata', v_meta,
            'status_callback_url', status_callback_url, 'uisp_client_id', uisp_client_id);
        v_digest := sha256(convert_to(jsonb_build_object(
            'operation', 'payments.create', 'params', v_params)::text, 'UTF8'));
        INSERT INTO idempotency_keys AS k (scope, key, operation, fingerprint, locked_at,
                resource_id, expires_at)
            VALUES (v_scope, request_id, 'payments.create', v_digest, clock_timestamp(), v_id,
                now() + make_interval(secs => v_cfg.idempotency_ttl_seconds))
            ON CONFLICT (scope, key) DO UPDATE SET operation = EXCLUDED.operation,
                fingerprint = EXCLUDED.fingerprint, status = 'running',
                locked_at = EXCLUDED.locked_at, response_status = NULL, response_body = NULL,
                resource_id = EXCLUDED.resource_id, created_at = now(), finished_at = NULL,
                expires_at = EXCLUDED.expires_at
            WHERE k.expires_at <= now()
            RETURNING k.key INTO v_key;
        IF v_key IS NULL THEN
            SELECT k.fingerprint, k.status, k.resource_id INTO v_held
                FROM idempotency_keys k WHERE k.scope = v_scope AND k.key = request_id;
            IF v_held.fingerprint <> v_digest THEN
                RAISE EXCEPTION USING ERRCODE = 'PD422',
                    MESSAGE = format('request_id %s was used for another request; use a new'
                        ' request_id for a new request', quote_literal(request_id)),
                    DETAIL = 'urn:paymentd:problem:idempotency-key-reused';
            ELSIF v_held.status = 'running' THEN
                RAISE EXCEPTION USING ERRCODE = 'PD409',
                    MESSAGE = format('a request with request_id %s is still running; retry'
                        ' shortly', quote_literal(request_id)),
                    DETAIL = 'urn:paymentd:problem:idempotency-key-in-use';
            END IF;
            RETURN v_held.resource_id;  -- a replay: the payment the first call made
        END IF;
    END IF;

    -- store.insert: the row, its history, the outbox event, the processor's message.
    INSERT INTO payments (id, amount, currency, method, kind, "interval", capture_method,
            description, customer, metadata, status_callback_url, uisp_client_id,
            created_by, provider, expires_at)
        VALUES (v_id, amount, v_code, method, kind, "interval", capture_method, description,
            customer, v_meta, status_callback_url, uisp_client_id, v_scope, v_cfg.provider,
            now() + make_interval(secs => v_cfg.pending_ttl_seconds))
        RETURNING * INTO v_row;
    INSERT INTO payment_events (payment_id, kind, from_status, to_status, actor)
        VALUES (v_id, 'transition', NULL, 'created', v_scope);
    -- Payment.announced(): what partners hear (no client secret, no callback URL).
    INSERT INTO events (id, type, subject, data)
        VALUES ('evt_' || replace(gen_random_uuid()::text, '-', ''), 'payment.created',
            'payment:' || v_id, jsonb_build_object(
                'id', v_id, 'status', v_row.status, 'amount', v_row.amount,
                'currency', v_row.currency, 'amount_captured', v_row.amount_captured,
                'amount_refunded', v_row.amount_refunded, 'method', v_row.method,
                'kind', v_row.kind, 'customer', v_row.customer, 'metadata', v_row.metadata,
                'uisp_client_id', v_row.uisp_client_id, 'provider', v_row.provider,
                'provider_ref', v_row.provider_ref, 'failure_code', v_row.failure_code));
    PERFORM pgmq.send('payments', jsonb_build_object('payment_id', v_id), 0);

    IF request_id IS NOT NULL THEN
        UPDATE idempotency_keys SET status = 'finished', response_status = 201,
                response_body = jsonb_build_object('id', v_id, 'status', 'created',
                    'amount', amount, 'currency', v_code),
                finished_at = now()
            WHERE scope = v_scope AND key = request_id;
    END IF;
    RETURN v_id;
END $$;

-- What became of one of the caller's own payments (created by the same login role):
-- the status, and what the customer pays with once the processor has it.
CREATE FUNCTION paymentd.payment_status(payment_id text)
RETURNS TABLE (status text, client_secret text, hosted_url text, final boolean,
               failure_code text, failure_message text)
LANGUAGE sql STABLE SECURITY DEFINER
AS $$
    SELECT p.status, p.client_secret, p.hosted_url,
           p.status IN ('succeeded', 'failed', 'canceled', 'expired'),
           p.failure_code, p.failure_message
    FROM payments p
    WHERE p.id = payment_status.payment_id AND p.created_by = 'sql:' || session_user
$$;

-- create_payment, committed, then waited on until the processor has a client secret /
-- hosted URL or the payment is final (the "synchronous RPC with polling" users had).
-- A procedure, because it must COMMIT its insert for the processor to see it; and so
-- SECURITY INVOKER with no SET clause (PostgreSQL forbids transaction control in a
-- procedure that has either): the rights come from the two SECURITY DEFINER functions
-- it calls. It runs with the caller's rights and search_path, so that path can only
-- affect the caller itself; the functions it calls are schema-qualified. Why polling and not LISTEN: a
-- backend only receives notifications between transactions, in the client protocol;
-- server-side code cannot wait for one. Each step is a tiny indexed read (10 ms, up to
-- 50 ms apart), committed so no snapshot is held while waiting. Call it outside an
-- explicit transaction block (a COMMIT inside one is refused).
CREATE PROCEDURE paymentd.create_payment_sync(
    amount              bigint,
    currency            text,
    timeout_seconds     double precision DEFAULT 3,
    description         text DEFAULT NULL,
    customer            text DEFAULT NULL,
    metadata            jsonb DEFAULT '{}',
    capture_method      text DEFAULT 'automatic',
    kind                text DEFAULT 'one_time',
    "interval"          text DEFAULT NULL,
    method              text DEFAULT NULL,  -- intent, or hosted_checkout if recurring
    status_callback_url text DEFAULT NULL,
    uisp_client_id      bigint DEFAULT NULL,
    request_id          text DEFAULT NULL,
    INOUT payment_id    text DEFAULT NULL,
    INOUT status        text DEFAULT NULL,
    INOUT client_secret text DEFAULT NULL,
    INOUT hosted_url    text DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
#variable_conflict use_variable
DECLARE
    v_deadline timestamptz;
    v_step     double precision := 0.01;
    v_final    boolean;
BEGIN
    IF timeout_seconds IS NULL OR NOT (timeout_seconds > 0 AND timeout_seconds <= 30) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'timeout_seconds must be more than 0 and at most 30',
            DETAIL = 'urn:paymentd:problem:invalid-request', HINT = 'field: timeout_seconds';
    END IF;
    payment_id := paymentd.create_payment(
        amount => amount, currency => currency, description => description,
        customer => customer, metadata => metadata, capture_method => capture_method,
        kind => kind, "interval" => "interval", method => method,
        status_callback_url => status_callback_url, uisp_client_id => uisp_client_id,
        request_id => request_id);
    COMMIT;  -- the payment and its queue message exist now, for the processor to see
    v_deadline := pg_catalog.clock_timestamp()
        + pg_catalog.make_interval(secs => timeout_seconds);
    LOOP
        SELECT s.status, s.client_secret, s.hosted_url, s.final
            INTO status, client_secret, hosted_url, v_final
            FROM paymentd.payment_status(payment_id) s;
        EXIT WHEN v_final OR client_secret IS NOT NULL OR hosted_url IS NOT NULL;
        IF pg_catalog.clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION USING ERRCODE = 'PD408',
                MESSAGE = pg_catalog.format('payment %s has no client secret or hosted URL'
                    ' after %s s (status %s); it is stored and still being processed: ask'
                    ' paymentd.payment_status(%L) later', payment_id, timeout_seconds,
                    status, payment_id),
                DETAIL = 'urn:paymentd:problem:timeout',
                HINT = 'payment_id: ' || payment_id;
        END IF;
        COMMIT;
        PERFORM pg_catalog.pg_sleep(v_step);
        v_step := CASE WHEN v_step < 0.05 THEN v_step * 1.5 ELSE 0.05 END;
    END LOOP;
END $$;

-- Nothing is callable by default (functions are EXECUTE to PUBLIC otherwise); a role
-- gets USAGE on the schema and EXECUTE on these three (docs/sql-api.md).
REVOKE ALL ON FUNCTION paymentd._refuse(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION paymentd.create_payment(bigint, text, text, text, jsonb, text, text,
    text, text, text, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION paymentd.payment_status(text) FROM PUBLIC;
REVOKE ALL ON PROCEDURE paymentd.create_payment_sync(bigint, text, double precision, text,
    text, jsonb, text, text, text, text, text, bigint, text, text, text, text, text)
    FROM PUBLIC;

-- SECURITY DEFINER functions get a fixed search_path: the schema the daemon's tables
-- were created in (this migration's current schema), then pg_temp last, so a caller's
-- own objects (a temp table named payments, an operator in their schema) can never be
-- picked up with the owner's rights. pg_catalog is searched first implicitly.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION paymentd.create_payment(bigint, text, text, text, jsonb,'
        ' text, text, text, text, text, bigint, text) SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
    EXECUTE format('ALTER FUNCTION paymentd.payment_status(text)'
        ' SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION paymentd._refuse(text, text, text)'
        ' SET search_path = pg_catalog, %I, pg_temp', current_schema());
END $$;
