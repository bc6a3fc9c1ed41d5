/*-------------------------------------------------------------------------
 *
 * procedures.c
 *	  The steps of the procedures that commit, for whoever may run them.
 *
 * stripe_sync_now, stripe_backfill and stripe_reconcile commit as they go,
 * so they cannot be SECURITY DEFINER: they run with their caller's rights,
 * and the internal functions that do the work are revoked from PUBLIC.  A
 * role granted EXECUTE on such a procedure must still be able to run it
 * (0.2.0's stripe_sync_now was a SECURITY DEFINER function, and the update
 * carried its grants over).  So each step of a procedure calls
 * stripe_billing._procedure_step(step, arg): it checks that the calling
 * role may EXECUTE the procedure the step belongs to, then runs the step in
 * stripe_billing._procedure_step_run, a SECURITY DEFINER function (the
 * extension owner's rights, a pinned search_path), called by OID as a member
 * of the extension.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "stripe_billing.h"

PG_FUNCTION_INFO_V1(stripe_procedure_step);

/* The procedure whose EXECUTE right lets a step through, by step prefix. */
typedef struct ProcedureGate
{
	const char *prefix;
	const char *procedure;
	int			nargs;
	Oid			argtypes[2];
} ProcedureGate;

static const ProcedureGate gates[] = {
	{"sync_now.", "stripe_sync_now", 1, {INT4OID}},
	{"backfill.", "stripe_backfill", 2, {TEXTARRAYOID, TEXTOID}},
	{"reconcile.", "stripe_reconcile", 1, {TEXTOID}},
};

/*
 * stripe_billing._procedure_step(step text, arg jsonb) -> jsonb
 *
 * Runs a step of a committing procedure for a caller who may EXECUTE that
 * procedure; see the file header.
 */
Datum
stripe_procedure_step(PG_FUNCTION_ARGS)
{
	char	   *step;
	const ProcedureGate *gate = NULL;
	Oid			procedure;
	Oid			run_argtypes[2] = {TEXTOID, JSONBOID};
	Oid			run;
	LOCAL_FCINFO(run_fcinfo, 2);
	FmgrInfo	flinfo;
	Datum		result;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("step must not be NULL")));
	step = text_to_cstring(PG_GETARG_TEXT_PP(0));
	for (int i = 0; i < lengthof(gates) && gate == NULL; i++)
		if (strncmp(step, gates[i].prefix, strlen(gates[i].prefix)) == 0)
			gate = &gates[i];
	if (gate == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a step of a stripe_billing procedure", step)));

	procedure = sb_extension_function(gate->procedure, gate->nargs, gate->argtypes, false);
	if (sb_proc_aclcheck(procedure, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for procedure stripe_billing.%s", gate->procedure)));

	run = sb_extension_function("_procedure_step_run", 2, run_argtypes, false);
	fmgr_info(run, &flinfo);
	InitFunctionCallInfoData(*run_fcinfo, &flinfo, 2, InvalidOid, NULL, NULL);
	run_fcinfo->args[0].value = PG_GETARG_DATUM(0);
	run_fcinfo->args[0].isnull = false;
	run_fcinfo->args[1].value = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	run_fcinfo->args[1].isnull = PG_ARGISNULL(1);
	result = FunctionCallInvoke(run_fcinfo);
	if (run_fcinfo->isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
