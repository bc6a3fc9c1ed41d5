-- bench/verify: stripe_verify_signature on a 5 KB payload against pgcrypto's
-- hmac() of the same bytes, same session, alternating rounds; prints the
-- median per-call cost of each and their ratio.
\set ON_ERROR_STOP on
CREATE EXTENSION IF NOT EXISTS stripe_billing;
CREATE EXTENSION IF NOT EXISTS pgcrypto;

-- One row, read per iteration, so nothing is constant-folded away.
CREATE TEMP TABLE input AS
SELECT payload, 'whsec_bench_secret_0123456789abcdef'::text AS secret,
       convert_to('whsec_bench_secret_0123456789abcdef', 'UTF8') AS secret_bytes,
       't=1700000000,v1=' || encode(hmac(convert_to('1700000000.', 'UTF8') || payload,
                                         convert_to('whsec_bench_secret_0123456789abcdef', 'UTF8'),
                                         'sha256'), 'hex') AS header,
       to_timestamp(1700000100) AS now
  FROM (SELECT convert_to(rpad('{"id":"evt_bench","object":"event","data":"', 5119, 'x') || '}', 'UTF8') AS payload) p;

DO $$
DECLARE
  n constant int := 20000;
  rounds constant int := 7;
  t0 timestamptz;
  ok bigint;
  verify_us float8[] := '{}';
  hmac_us float8[] := '{}';
  loop_us float8[] := '{}';
  v float8; h float8; l float8;
BEGIN
  ASSERT (SELECT length(payload) FROM input) = 5120, 'payload is not 5 KB';
  ASSERT (SELECT stripe_billing.stripe_verify_signature(payload, header, secret, 300, now) FROM input),
         'the benchmark signature does not verify';
  FOR r IN 1..rounds LOOP
    t0 := clock_timestamp();
    SELECT count(*) FILTER (WHERE stripe_billing.stripe_verify_signature(i.payload, i.header, i.secret, 300, i.now))
      INTO ok FROM generate_series(1, n), input i;
    verify_us := verify_us || extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;
    ASSERT ok = n;

    t0 := clock_timestamp();
    SELECT count(*) FILTER (WHERE hmac(i.payload, i.secret_bytes, 'sha256') IS NOT NULL)
      INTO ok FROM generate_series(1, n), input i;
    hmac_us := hmac_us || extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;

    t0 := clock_timestamp();
    SELECT count(*) FILTER (WHERE i.payload IS NOT NULL) INTO ok FROM generate_series(1, n), input i;
    loop_us := loop_us || extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;
  END LOOP;
  SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) INTO v FROM unnest(verify_us) x;
  SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) INTO h FROM unnest(hmac_us) x;
  SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) INTO l FROM unnest(loop_us) x;
  RAISE NOTICE 'payload 5120 bytes, % calls x % rounds (median)', n, rounds;
  RAISE NOTICE 'stripe_verify_signature: % us/call', round(v::numeric, 2);
  RAISE NOTICE 'pgcrypto hmac():         % us/call', round(h::numeric, 2);
  RAISE NOTICE 'empty scan (overhead):   % us/row', round(l::numeric, 2);
  RAISE NOTICE 'ratio verify/hmac: %x (target <= 1.3x)', round((v / h)::numeric, 3);
END $$;
