/*-------------------------------------------------------------------------
 *
 * stripe_billing.c
 *	  Module entry point: defines the settings, installs the secret
 *	  scrubber and, under shared_preload_libraries, registers the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "stripe_billing.h"

#ifdef PG_MODULE_MAGIC_EXT
PG_MODULE_MAGIC_EXT(.name = "stripe_billing",.version = SB_VERSION);
#else
PG_MODULE_MAGIC;
#endif

void		_PG_init(void);

/* Did shared_preload_libraries load us (backends inherit it from the postmaster)? */
static bool preloaded = false;

PG_FUNCTION_INFO_V1(stripe_preloaded);

/*
 * stripe_billing._preloaded() -> boolean
 *
 * Whether shared_preload_libraries loaded the library: the background
 * worker runs only then.
 */
Datum
stripe_preloaded(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(preloaded);
}

/* Module load. */
void
_PG_init(void)
{
	sb_define_settings();

	if (process_shared_preload_libraries_in_progress)
	{
		preloaded = true;
		sb_register_worker();
		/* (what wakes the worker for a thin event: thin.c) */
		sb_thin_shmem_init();
	}

	sb_install_secret_scrubber();
}
