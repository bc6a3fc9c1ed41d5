/*-------------------------------------------------------------------------
 *
 * shapes.c
 *	  Checking a Stripe object against the fields of its kind before it is
 *	  mapped.
 *
 * The SQL mapping reads fields with ->> and casts; a field of the wrong JSON
 * type would either fail with a message that does not name it or, worse, be
 * stored as text.  So before mapping, every field the mapping reads (its
 * kind's fields, declared in kinds.c) is checked here against its expected
 * JSON type, and the first mismatch raises an error naming the field by its
 * full path ("data.object.items.data[1].quantity").  Values the mapping's
 * casts and indexes would refuse are checked too: Unix times within
 * timestamptz's range (stripe_billing._ts), amounts within bigint, counts
 * within integer, ids and keys short enough for an index, an item listed
 * once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "stripe_billing.h"
#include "kinds.h"

#define J_NUMBER (J_INT | J_INT4 | J_TIME)

/*
 * Ids and keys land in primary keys and indexes, whose entries must fit in a
 * third of a page (2704 bytes): they are capped well below that.  A user
 * reference from metadata may be as long as Stripe lets a metadata value
 * be (500 characters; here, bytes).
 */
#define KEY_MAX 255
#define REF_MAX 500

/* The range of Unix seconds a timestamptz holds (to_timestamp's checks). */
#define UNIX_SECONDS_MIN ((int64) SECS_PER_DAY * (DATETIME_MIN_JULIAN - UNIX_EPOCH_JDATE))
#define UNIX_SECONDS_END ((int64) SECS_PER_DAY * (TIMESTAMP_END_JULIAN - UNIX_EPOCH_JDATE))

/* Describes a type mask for messages. */
static const char *
expected_types(int types)
{
	if (types & J_ID)
		return "an id string or an object with an id";
	switch (types & ~(J_KEY | J_REF | J_UNIQUE | J_EXPANDED))
	{
		case J_NUM:
			return "a number";
		case J_STR:
			return "a string";
		case J_INT:
		case J_INT4:
			return "an integer";
		case J_TIME:
			return "a Unix time in whole seconds";
		case J_BOOL:
			return "a boolean";
		case J_OBJ:
			return "an object";
		case J_ARR:
			return "an array";
	}
	return "of another type";
}

/* Raises the error for a field of the wrong type. */
static void
wrong_field(const StringInfo where, const char *problem)
{
	ereport(ERROR,
			(errcode(ERRCODE_SB_INVALID_OBJECT),
			 errmsg("invalid Stripe object: field \"%s\" %s", where->data, problem)));
}

/* A value for a message, cut short when long. */
static const char *
shown(const char *s)
{
	return strlen(s) <= 40 ? s : psprintf("%.40s...", s);
}

/*
 * Checks a JSON number against the integer kind of the field: an integer
 * within bigint (J_INT) or integer (J_INT4), or Unix seconds a timestamptz
 * holds (J_TIME, what stripe_billing._ts converts).
 */
static void
check_number(JsonbValue *v, int types, const StringInfo where)
{
	char	   *digits = DatumGetCString(DirectFunctionCall1(numeric_out,
															 NumericGetDatum(v->val.numeric)));
	char	   *end;
	int64		value;
	bool		in_range;

	if (strspn(digits, "-0123456789") != strlen(digits))
		wrong_field(where, psprintf("must be %s, not %s", expected_types(types), shown(digits)));

	errno = 0;
	value = strtoi64(digits, &end, 10);
	in_range = errno == 0 && *end == '\0';
	if (types & J_TIME)
	{
		if (!in_range || value < UNIX_SECONDS_MIN || value >= UNIX_SECONDS_END)
			wrong_field(where, psprintf("must be a Unix time in whole seconds within the range of timestamptz, not %s",
										shown(digits)));
	}
	else if (types & J_INT4)
	{
		if (!in_range || value < PG_INT32_MIN || value > PG_INT32_MAX)
			wrong_field(where, psprintf("must be an integer within the range of integer, not %s",
										shown(digits)));
	}
	else if (!in_range)
		wrong_field(where, psprintf("must be an integer within the range of bigint, not %s",
									shown(digits)));
}

/* Checks the length of a string id or key. */
static void
check_length(int len, int types, const StringInfo where)
{
	int			max = (types & J_REF) ? REF_MAX : KEY_MAX;

	if ((types & (J_ID | J_KEY | J_REF)) && len > max)
		wrong_field(where, psprintf("must be at most %d bytes, not %d", max, len));
}

/* Checks one leaf value against its accepted types. */
static void
check_value(JsonbValue *v, int types, bool required, const StringInfo where)
{
	bool		ok;

	if (v == NULL || v->type == jbvNull)
	{
		if (required)
			wrong_field(where, "is missing");
		return;
	}
	switch (v->type)
	{
		case jbvString:
			ok = (types & (J_STR | J_ID)) != 0;
			if (ok)
				check_length(v->val.string.len, types, where);
			break;
		case jbvNumeric:
			ok = (types & (J_NUMBER | J_NUM)) != 0;
			/* (jsonb holds a number numeric takes: nothing more to check) */
			if (ok && (types & J_NUMBER))
				check_number(v, types, where);
			break;
		case jbvBool:
			ok = (types & J_BOOL) != 0;
			break;
		case jbvBinary:
			if (JsonContainerIsObject(v->val.binary.data))
			{
				ok = (types & (J_OBJ | J_ID)) != 0;
				if (ok && (types & J_ID) && !(types & J_OBJ))
				{
					/* an expanded object stands for its id */
					JsonbValue	buf;
					JsonbValue *id = getKeyJsonValueFromContainer(v->val.binary.data,
																  "id", 2, &buf);

					appendStringInfoString(where, ".id");
					if (id == NULL || id->type != jbvString)
						wrong_field(where, "must be a string");
					check_length(id->val.string.len, types, where);
					where->len -= 3;
					where->data[where->len] = '\0';
				}
			}
			else
				ok = (types & J_ARR) != 0;
			break;
		default:
			ok = false;
	}
	if (!ok)
		wrong_field(where, psprintf("must be %s, not %s", expected_types(types),
									JsonbTypeName(v)));
}

/* One string of an array's elements, for J_UNIQUE. */
typedef struct SeenValue
{
	const char *val;
	int			len;
	uint32		k;				/* the element's index */
} SeenValue;

/* Orders seen values by value, then by index. */
static int
seen_value_cmp(const void *a, const void *b)
{
	const SeenValue *x = a;
	const SeenValue *y = b;
	int			c;

	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	c = memcmp(x->val, y->val, x->len);
	if (c != 0)
		return c;
	return x->k < y->k ? -1 : (x->k > y->k ? 1 : 0);
}

/*
 * Raises the error for the first element (in array order) whose key, the
 * string leaf of each element, repeats an earlier element's.  where is the
 * array's path.
 */
static void
check_unique(SeenValue *seen, int nseen, const char *leaf, StringInfo where)
{
	int			first = -1;
	char	   *array;

	/* sorted, a repeat follows the one it repeats: the earliest repeat wins */
	qsort(seen, nseen, sizeof(SeenValue), seen_value_cmp);
	for (int j = 1; j < nseen; j++)
		if (seen[j].len == seen[j - 1].len &&
			memcmp(seen[j].val, seen[j - 1].val, seen[j].len) == 0 &&
			(first < 0 || seen[j].k < seen[first].k))
			first = j;
	if (first < 0)
		return;

	array = pstrdup(where->data);
	appendStringInfo(where, "[%u].%s", seen[first].k, leaf);
	wrong_field(where, psprintf("must be unique: \"%.*s\" is also %s[%u].%s",
								seen[first].len, seen[first].val,
								array, seen[first - 1].k, leaf));
}

/*
 * Walks segs[i..] of a field path from container c (an object), appending
 * the path walked to where, and checks the leaf.  Missing intermediate
 * objects are fine: their own specs say whether they are required.
 */
static void
check_field_path(JsonbContainer *c, char **segs, int nsegs, int i,
		   const SbField *spec, StringInfo where)
{
	char	   *seg = segs[i];
	size_t		len = strlen(seg);
	bool		each = len > 2 && strcmp(seg + len - 2, "[]") == 0;
	JsonbValue	buf;
	JsonbValue *v;
	int			base_len;
	uint32		nelems;
	SeenValue  *seen = NULL;
	int			nseen = 0;

	if (each)
		len -= 2;
	v = getKeyJsonValueFromContainer(c, seg, len, &buf);
	appendStringInfo(where, ".%.*s", (int) len, seg);

	if (i == nsegs - 1 && !each)
	{
		check_value(v, spec->types, spec->required, where);
		return;
	}
	if (v == NULL || v->type == jbvNull)
		return;

	if (!each)
	{
		/* an expandable field given as its id has nothing under it */
		if ((spec->types & J_EXPANDED) && v->type == jbvString)
			return;
		if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
			wrong_field(where, psprintf("must be an object, not %s", JsonbTypeName(v)));
		check_field_path(v->val.binary.data, segs, nsegs, i + 1, spec, where);
		return;
	}

	if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		wrong_field(where, psprintf("must be an array, not %s", JsonbTypeName(v)));
	base_len = where->len;
	nelems = JsonContainerSize(v->val.binary.data);
	/* a key unique among the elements: the leaf right under them */
	if ((spec->types & J_UNIQUE) && i == nsegs - 2 && nelems > 1)
		seen = palloc(nelems * sizeof(SeenValue));
	for (uint32 k = 0; k < nelems; k++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(v->val.binary.data, k);

		where->len = base_len;
		where->data[base_len] = '\0';
		appendStringInfo(where, "[%u]", k);
		if (i == nsegs - 1)
			check_value(elem, spec->types, spec->required, where);
		else
		{
			if (elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
				wrong_field(where, psprintf("must be an object, not %s", JsonbTypeName(elem)));
			check_field_path(elem->val.binary.data, segs, nsegs, i + 1, spec, where);
			if (seen)
			{
				JsonbValue	key_buf;
				JsonbValue *key = getKeyJsonValueFromContainer(elem->val.binary.data,
															   segs[i + 1], strlen(segs[i + 1]),
															   &key_buf);

				if (key && key->type == jbvString)
				{
					seen[nseen].val = key->val.string.val;
					seen[nseen].len = key->val.string.len;
					seen[nseen].k = k;
					nseen++;
				}
			}
		}
	}
	if (seen)
	{
		where->len = base_len;
		where->data[base_len] = '\0';
		check_unique(seen, nseen, segs[i + 1], where);
		pfree(seen);
	}
}

/*
 * Checks every field the mapping of this kind of object reads; raises
 * SBE03 naming the first bad field.
 */
void
sb_check_object_shape(JsonbContainer *object, const SbObjectKind *kind)
{
	StringInfoData where;

	initStringInfo(&where);
	for (const SbField *spec = kind->fields; spec->path; spec++)
	{
		char	   *copy = pstrdup(spec->path);
		char	   *segs[8];
		int			nsegs = 0;
		char	   *save;

		for (char *s = strtok_r(copy, ".", &save); s && nsegs < lengthof(segs);
			 s = strtok_r(NULL, ".", &save))
			segs[nsegs++] = s;

		resetStringInfo(&where);
		appendStringInfoString(&where, "data.object");
		check_field_path(object, segs, nsegs, 0, spec, &where);
		pfree(copy);
	}
	pfree(where.data);
}
