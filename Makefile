# stripe_billing: PGXS build.  `make && make install`, then `make installcheck`
# against a running server (test/run.sh sets one up and runs everything).
EXTENSION = stripe_billing
EXTVERSION = $(shell sed -n "s/^default_version = '\\(.*\\)'/\\1/p" $(EXTENSION).control)
MODULE_big = stripe_billing
OBJS = src/stripe_billing.o src/guc.o src/secrets.o src/signatures.o src/events.o src/shapes.o src/entitlements.o src/http.o src/api.o src/checkout.o src/listing.o src/rate.o src/usage.o src/worker.o src/extension.o src/procedures.o src/locks.o src/kinds.o src/citus.o src/thin.o
# The install script of this version is built from the chapters of one SQL
# source; the upgrade scripts from every released version are installed as
# they are.
DATA_built = $(EXTENSION)--$(EXTVERSION).sql
DATA = $(wildcard sql/$(EXTENSION)--*--*.sql)
EXTRA_CLEAN = $(EXTENSION)--*.sql
PGFILEDESC = "stripe_billing - Stripe billing inside PostgreSQL"

# libcurl and OpenSSL's libcrypto, as their own tools say to build with them
# (plain -l flags where those are missing).
SB_CURL_CFLAGS = $(shell curl-config --cflags 2>/dev/null)
SB_CURL_LIBS = $(or $(shell curl-config --libs 2>/dev/null),-lcurl)
SB_CRYPTO_CFLAGS = $(shell pkg-config --cflags libcrypto 2>/dev/null)
SB_CRYPTO_LIBS = $(or $(shell pkg-config --libs libcrypto 2>/dev/null),-lcrypto)
PG_CPPFLAGS = -I$(srcdir)/src -DSB_VERSION='"$(EXTVERSION)"' $(SB_CURL_CFLAGS) $(SB_CRYPTO_CFLAGS)
SHLIB_LINK = $(SB_CRYPTO_LIBS) $(SB_CURL_LIBS)

# The warnings PostgreSQL's own build enables: pg_config --cflags brings
# those of the server's version; the ones it lacks (-Wshadow=compatible-local
# came in 16, -Wmissing-variable-declarations in 17) are added where the
# compiler takes them.  -Werror is the CI's (COPT=-Werror).
SB_WARNINGS = -Wmissing-prototypes -Wpointer-arith -Wdeclaration-after-statement -Werror=vla \
	-Wendif-labels -Wmissing-format-attribute -Wimplicit-fallthrough=3 -Wcast-function-type \
	-Wshadow=compatible-local -Wformat-security -Wmissing-variable-declarations
PG_CFLAGS = $(foreach w,$(filter-out $(shell $(PG_CONFIG) --cflags),$(SB_WARNINGS)),\
	$(shell $(CC) -Werror $(w) -fsyntax-only -x c /dev/null >/dev/null 2>&1 && echo $(w)))

# make installcheck, against a running server with the library preloaded:
# pg_regress runs test/sql/<name>.sql against test/expected/<name>.out,
# pg_isolation_regress test/specs/<name>.spec against test/expected/<name>.out
REGRESS_OPTS = --inputdir=test
ISOLATION_OPTS = --inputdir=test
REGRESS = settings signatures event_ledger webhooks event_mapping event_ordering event_failures event_batches event_lifecycle billing_model_ordering dispute_access expiring_cards entitlements entitlement_support backfill usage_outbox object_kinds connect connect_api thin_events subscription_schedule_lifecycle paused_collection_access drop_extension
ISOLATION = concurrent_delivery concurrent_subscription_updates entitlement_rls entitlement_cache_snapshots concurrent_plan_switch backfill_snapshots usage_outbox_concurrent_send event_batch_features lock_order_webhook_page lock_order_page_page lock_order_batch_webhook lock_order_two_users concurrent_link_cancel concurrent_dispute_charge thin_fetch_snapshot_twin

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

$(EXTENSION)--$(EXTVERSION).sql: $(sort $(wildcard sql/chapters/*.sql)) $(EXTENSION).control
	{ echo "-- $(EXTENSION) $(EXTVERSION): install script, built from sql/chapters/*.sql"; \
	  cat $(sort $(wildcard sql/chapters/*.sql)); } > $@
