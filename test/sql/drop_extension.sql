-- DROP EXTENSION: without CASCADE it refuses while the app's own objects
-- use the extension; with CASCADE it removes those objects too (a policy
-- calling stripe_has_entitlement, a view over its tables), and every
-- billing table with its data.
CREATE EXTENSION stripe_billing;
\set VERBOSITY terse
CREATE TABLE app_reports (id int, body text);
ALTER TABLE app_reports ENABLE ROW LEVEL SECURITY;
CREATE POLICY app_reports_paid ON app_reports FOR SELECT
  USING ((SELECT stripe_billing.stripe_has_entitlement(current_setting('app.user_ref', true), 'reports')));
CREATE VIEW app_customers AS SELECT id, user_ref FROM stripe_billing.customers;
DROP EXTENSION stripe_billing;
SELECT count(*) AS policies FROM pg_policy WHERE polname = 'app_reports_paid';
DROP EXTENSION stripe_billing CASCADE;
SELECT count(*) AS policies FROM pg_policy WHERE polname = 'app_reports_paid';
SELECT count(*) AS views FROM pg_class WHERE relname = 'app_customers';
SELECT count(*) AS tables_left FROM pg_class WHERE relname = 'app_reports';
SELECT count(*) AS schema_left FROM pg_namespace WHERE nspname = 'stripe_billing';
DROP TABLE app_reports;
