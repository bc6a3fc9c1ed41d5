-- The usage outbox without the network (requests are tested against the
-- fake Stripe by test/integration/usage_outbox.sh): rows Stripe cannot take are put out
-- of the way, never in front of the others.
CREATE EXTENSION stripe_billing;
\set VERBOSITY terse

-- an installation id of 16 hex digits, the oldest row's
SELECT stripe_billing.stripe_installation_id() ~ '^[0-9a-f]{16}$' AS well_formed;
INSERT INTO stripe_billing.installation (id, created_at) VALUES ('00000000000000aa', now() + interval '1 day');
SELECT stripe_billing.stripe_installation_id() <> '00000000000000aa' AS oldest_wins;
DELETE FROM stripe_billing.installation WHERE id = '00000000000000aa';

-- arguments
SELECT stripe_billing.stripe_report_usage('', 'api_calls', 1);
SELECT stripe_billing.stripe_report_usage('u1', NULL, 1);
SELECT stripe_billing.stripe_send_usage(0);

-- the backoff: 1 s, doubling, at most an hour
SELECT n, stripe_billing._usage_backoff(n) FROM unnest('{1,2,3,10,13,100}'::int[]) n;

-- two rows of a user without a customer, one older than Stripe's 35 days,
-- then two sendable rows
SELECT stripe_billing.stripe_link_customer('u_known', 'cus_known');
SELECT stripe_billing.stripe_report_usage('u_unknown', 'api_calls', 1),
       stripe_billing.stripe_report_usage('u_unknown', 'api_calls', 2),
       stripe_billing.stripe_report_usage('u_known', 'api_calls', 3, now() - interval '36 days'),
       stripe_billing.stripe_report_usage('u_known', 'api_calls', 4),
       stripe_billing.stripe_report_usage('u_known', 'api_calls', 5);
SELECT pending, waiting, sent, failed, oldest_pending_age IS NOT NULL AS has_age FROM stripe_billing.usage_status;
-- one call with max_rows 2 reaches the sendable rows (no key here: they
-- wait, with the reason), and puts max_rows of the others out of the way
SELECT stripe_billing.stripe_send_usage(2);
SELECT value, attempts, sent_at IS NOT NULL AS sent, failed_at IS NOT NULL AS failed,
       next_attempt_at > now() AS waits, last_error
  FROM stripe_billing.usage_outbox ORDER BY id;
SELECT pending, waiting, sent, failed FROM stripe_billing.usage_status;
-- waiting rows are not tried again before their time; the next call puts
-- the old row out of the way: failed
SELECT stripe_billing.stripe_send_usage(10);
SELECT value, attempts, failed_at IS NOT NULL AS failed, next_attempt_at IS NULL AS no_retry,
       regexp_replace(last_error, '^occurred_at .* is older', 'occurred_at (36 days ago) is older') AS last_error
  FROM stripe_billing.usage_outbox ORDER BY id;
-- their time come, the sendable rows are tried before the waiting ones again
UPDATE stripe_billing.usage_outbox SET next_attempt_at = now() - interval '1 second' WHERE next_attempt_at IS NOT NULL;
SELECT stripe_billing.stripe_send_usage(10);
SELECT value, attempts, next_attempt_at - now() > interval '1.5 seconds' AS backed_off_longer
  FROM stripe_billing.usage_outbox WHERE failed_at IS NULL ORDER BY id;
-- failed rows are made pending again on request only
SELECT stripe_billing.stripe_retry_failed_usage(ARRAY[1::bigint, 2]);
SELECT stripe_billing.stripe_retry_failed_usage();
SELECT value, attempts, failed_at IS NULL AS pending FROM stripe_billing.usage_outbox WHERE value = 3;
SELECT stripe_billing.stripe_retry_failed_usage();

-- app roles cannot send or retry
SELECT stripe_billing.stripe_installation_id() AS installation_id \gset
CREATE ROLE usage_app;
SET ROLE usage_app;
SELECT stripe_billing.stripe_send_usage();
SELECT stripe_billing.stripe_retry_failed_usage();
SELECT * FROM stripe_billing.usage_status;
-- but any role reads the installation id (0.3.0: permission denied for
-- table installation)
SELECT stripe_billing.stripe_installation_id() = :'installation_id' AS same_id;
RESET ROLE;
DROP ROLE usage_app;
DROP EXTENSION stripe_billing;
