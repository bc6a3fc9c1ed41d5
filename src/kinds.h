/*-------------------------------------------------------------------------
 *
 * kinds.h
 *	  The kinds of Stripe object that events are mapped from, declared
 *	  once (kinds.c) for the ledger, the shape check and the locks.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SB_KINDS_H
#define SB_KINDS_H

#include "utils/jsonb.h"

/* Accepted JSON types of a field (a mask); JSON null is always accepted. */
#define J_STR	0x01
#define J_INT	0x02			/* an integer within bigint */
#define J_BOOL	0x04
#define J_OBJ	0x08
#define J_ARR	0x10
#define J_ID	0x20			/* a string id, or an expanded object with one;
								 * at most KEY_MAX bytes */
#define J_INT4	0x40			/* an integer within integer */
#define J_TIME	0x80			/* Unix seconds within timestamptz */
#define J_NUM	0x800			/* any number (a percentage: 25.5) */
/* Checks on top of the type */
#define J_KEY	0x100			/* a string of at most KEY_MAX bytes */
#define J_REF	0x200			/* a string of at most REF_MAX bytes */
#define J_UNIQUE 0x400			/* a string unique among the array's elements */
#define J_EXPANDED 0x1000		/* under an expandable field: checked when
								 * it is an expanded object, not its id */

/* One field the shape check validates. */
typedef struct SbField
{
	const char *path;			/* dotted; "name[]" walks every array element */
	int			types;
	bool		required;		/* must be present and not null */
} SbField;

/*
 * A kind of Stripe object: which events carry it, the SQL function that
 * applies it, the fields that function reads (validated first, see
 * shapes.c), and the keys applying it locks (see locks.c).  Paths are
 * dotted, as in SbField.
 */
typedef struct SbObjectKind
{
	const char *name;			/* the object's "object" field */
	const char *event_types[3]; /* exact types, or prefixes ending in '.' */
	const char *ignored_types[2];	/* of those, types whose object is not
									 * kept (recorded as ignored) */
	const char *notice_types[2];	/* types announced to the application
									 * (NOTIFY stripe_billing) when first
									 * recorded: events that have no row */
	const char *apply_function; /* in schema stripe_billing */
	bool		apply_takes_type;	/* f(o, ev_type, ev_id, ev_created), or
									 * without ev_type */
	const SbField *fields;		/* ends with {NULL} */
	const char *row_kind;		/* the kind of the rows it writes, for their
								 * keys ("price" for a plan), or NULL */
	const char *row_ids[3];		/* the ids of those rows */
	const char *customer;		/* the customer whose link or features it may
								 * change */
	const char *user_refs[5];	/* a user it names: the first non-empty one */

	/*
	 * Rows whose customer's users' features it may change, though it does
	 * not name that customer: the id at path is a row of table (in schema
	 * stripe_billing), whose customer column locks.c reads to take that
	 * customer's key.
	 */
	struct
	{
		const char *table;
		const char *path;
	}			customers_of_rows[2];
} SbObjectKind;

#define SB_NUM_OBJECT_KINDS 23
extern const SbObjectKind sb_object_kinds[];

extern const SbObjectKind *sb_object_kind(const char *name);
extern bool sb_event_type_is_mapped(const char *type, const char *kind);
extern bool sb_event_type_is_notice(const char *type, const char *kind);

/*
 * What the worker does with a thin event (a v2.core.event notification),
 * by its type and its related object's type (kinds.c, thin.c):
 *   IGNORED         kept as ignored at once (replayable)
 *   PING            v2.core.event_destination.ping: applied at once
 *   OBJECT          fetch the related object, apply it as a snapshot
 *   SNAPSHOT_EVENT  no related object: apply the object of the snapshot
 *                   event the fetched event names (an entitlement summary)
 *   APPLICATION     account.application.*: the event's account and time
 *   METER_ERRORS    meter error reports: mark the usage rows concerned
 */
typedef enum SbThinAction
{
	SB_THIN_IGNORED,
	SB_THIN_PING,
	SB_THIN_OBJECT,
	SB_THIN_SNAPSHOT_EVENT,
	SB_THIN_APPLICATION,
	SB_THIN_METER_ERRORS
} SbThinAction;

extern SbThinAction sb_thin_action(const char *type, const char *related_type, const char **kind);
extern const char *sb_thin_receive_outcome(const char *type, const char *related_type);

/* shapes.c */
extern void sb_check_object_shape(JsonbContainer *object, const SbObjectKind *kind);

#endif							/* SB_KINDS_H */
