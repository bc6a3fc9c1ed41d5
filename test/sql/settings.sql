-- Settings: the secret ones are settable and visible by superusers only
-- (SHOW and current_setting show them masked to pg_read_all_settings;
-- pg_settings and SHOW ALL never list them), never storable where every
-- role can read them (ALTER DATABASE/ROLE ... SET, a function's SET); the
-- stripe_billing. prefix is reserved.
CREATE EXTENSION stripe_billing;
LOAD 'stripe_billing';

SET stripe_billing.webhook_secret = 'whsec_regress_one, whsec_regress_two';
SET stripe_billing.api_key = 'sk_test_regress_key_0123456789';

-- superusers see and set them
SHOW stripe_billing.webhook_secret;
SELECT current_setting('stripe_billing.api_key');
-- pg_settings (reset_val, boot_val ...) and SHOW ALL leave them out, for everyone
SELECT name, context FROM pg_settings WHERE name LIKE 'stripe_billing.%' ORDER BY name;

-- never stored where every role can read them, not even by a superuser
ALTER DATABASE contrib_regression SET stripe_billing.api_key = 'sk_test_in_catalog';
ALTER ROLE CURRENT_USER SET stripe_billing.webhook_secret = 'whsec_in_catalog';
CREATE FUNCTION pg_temp.leaky() RETURNS int LANGUAGE sql
  SET stripe_billing.api_key = 'sk_test_in_catalog' AS 'SELECT 1';
SELECT count(*) AS stored FROM pg_db_role_setting WHERE array_to_string(setconfig, ',') LIKE '%stripe_billing%';
-- a header value must be printable ASCII
SET stripe_billing.api_version = E'2025-03-31.basil\r\nStripe-Account: acct_x';

-- a plain role sees nothing and can set nothing
CREATE ROLE regress_sb_app;
SET ROLE regress_sb_app;
SHOW stripe_billing.webhook_secret;
SHOW stripe_billing.api_key;
SELECT current_setting('stripe_billing.api_key');
SELECT name FROM pg_settings WHERE name LIKE 'stripe_billing.%' ORDER BY name;
SHOW ALL \g /dev/null
SELECT count(*) AS leaked FROM pg_show_all_settings()
 WHERE setting LIKE '%whsec_%' OR setting LIKE '%sk_test_%';
SET stripe_billing.webhook_secret = 'whsec_from_app';
SET stripe_billing.api_key = 'sk_test_from_app';
SET stripe_billing.livemode = on;
SET stripe_billing.webhook_tolerance = 0;
ALTER DATABASE contrib_regression SET stripe_billing.api_key = 'sk_test_from_app';
RESET ROLE;

-- pg_read_all_settings may read settings, but secrets only masked
CREATE ROLE regress_sb_reader IN ROLE pg_read_all_settings;
SET ROLE regress_sb_reader;
SHOW stripe_billing.webhook_secret;
SELECT current_setting('stripe_billing.api_key');
SELECT count(*) AS secret_rows FROM pg_settings
 WHERE name IN ('stripe_billing.api_key', 'stripe_billing.webhook_secret');
SELECT count(*) AS leaked FROM pg_settings s WHERE s::text LIKE '%regress_key%' OR s::text LIKE '%whsec_regress%';
RESET ROLE;

-- the prefix is reserved: typos are errors, not silent placeholders
SET stripe_billing.webhook_secrets = 'whsec_typo';
SET stripe_billing.livemode = on;
SHOW stripe_billing.livemode;
RESET stripe_billing.livemode;

-- ALTER DATABASE ... SET works (and applies to new sessions)
ALTER DATABASE contrib_regression SET stripe_billing.livemode = on;
\c
SHOW stripe_billing.livemode;
ALTER DATABASE contrib_regression RESET stripe_billing.livemode;
\c
LOAD 'stripe_billing';
SHOW stripe_billing.livemode;

-- an unset secret shows as empty
SHOW stripe_billing.api_key;

-- the library names itself and its version (PG_MODULE_MAGIC_EXT, 18 and
-- later; before 18 there is no such function)
SELECT module_name, version = (SELECT default_version FROM pg_available_extensions
                                WHERE name = 'stripe_billing') AS version_matches
  FROM pg_get_loaded_modules() WHERE file_name LIKE 'stripe_billing%';

DROP ROLE regress_sb_app;
DROP ROLE regress_sb_reader;
DROP EXTENSION stripe_billing;
SELECT count(*) AS leftovers FROM pg_namespace WHERE nspname = 'stripe_billing';
