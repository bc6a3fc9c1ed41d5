/*-------------------------------------------------------------------------
 *
 * extension.c
 *	  The extension's own objects, found by OID through its membership.
 *
 * The background worker runs as a superuser (or as stripe_billing.worker_role)
 * in a database whose owner may be an ordinary role.  That owner can create
 * a schema named stripe_billing, and functions in it, before CREATE
 * EXTENSION or after DROP EXTENSION: a lookup by name would then find and
 * run the owner's code with the worker's rights.  So whatever C code calls
 * by itself (the worker's steps, the procedures' steps, the mappings) is
 * looked up here: the extension must be installed in this database, and
 * the schema and the function found must be members of it (pg_depend), or
 * the lookup fails.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "commands/extension.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"

#include "stripe_billing.h"

#define SB_SCHEMA "stripe_billing"

/* The OID of the extension in this database, or InvalidOid when absent. */
Oid
sb_extension_oid(void)
{
	return get_extension_oid("stripe_billing", true);
}

/* The role that owns the extension (its SECURITY DEFINER functions run as it). */
Oid
sb_extension_owner(Oid extension)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			owner = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extension));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		owner = ((Form_pg_extension) GETSTRUCT(tuple))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (!OidIsValid(owner))
		elog(ERROR, "extension with OID %u does not exist", extension);
	return owner;
}

/*
 * The function stripe_billing.<name>(argtypes) that belongs to the
 * installed extension.  InvalidOid when the extension is not installed, or
 * (missing_ok) the function does not exist; an error when a schema or a
 * function of that name exists but is not the extension's.
 */
Oid
sb_extension_function(const char *name, int nargs, const Oid *argtypes, bool missing_ok)
{
	Oid			extension = sb_extension_oid();
	Oid			schema;
	Oid			function;
	ObjectWithArgs *routine;

	if (!OidIsValid(extension))
	{
		if (missing_ok)
			return InvalidOid;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"stripe_billing\" is not installed in this database")));
	}
	schema = get_namespace_oid(SB_SCHEMA, true);
	if (!OidIsValid(schema) || getExtensionOfObject(NamespaceRelationId, schema) != extension)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("schema \"%s\" does not belong to extension \"stripe_billing\"", SB_SCHEMA)));

	/* (a routine: LookupFuncName leaves procedures out) */
	routine = makeNode(ObjectWithArgs);
	routine->objname = list_make2(makeString(SB_SCHEMA), makeString(pstrdup(name)));
	for (int i = 0; i < nargs; i++)
		routine->objargs = lappend(routine->objargs, makeTypeNameFromOid(argtypes[i], -1));
	function = LookupFuncWithArgs(OBJECT_ROUTINE, routine, true);
	if (!OidIsValid(function))
	{
		if (missing_ok)
			return InvalidOid;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s.%s does not exist", SB_SCHEMA, name)));
	}
	if (getExtensionOfObject(ProcedureRelationId, function) != extension)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("function %s.%s does not belong to extension \"stripe_billing\"",
						SB_SCHEMA, name)));
	return function;
}
