'use strict';
// Subscription schedules: made from a subscription (from_subscription), their
// phases updated, released or canceled, and the phase transitions a renewal
// reaches (advanceSubscription in billing.js calls enterNextPhase). Each
// function validates before it mutates and appends the events Stripe emits:
// subscription_schedule.created / .updated / .released / .canceled /
// .completed, with customer.subscription.updated (or .deleted) when the
// subscription changes with them.
//
// Modeled: schedules of an existing subscription only (not a new
// subscription's, with customer and phases); the current phase as it is
// (an update may end it at another date, not change its prices); later
// phases of any prices, whose length is end_date, duration, iterations or,
// for the last phase, one interval of its first price; end_behavior
// release (the subscription goes on) and cancel (it ends with the last
// phase).

const { StripeError, invalidParam, missingParam, intParam, boolParam, enumParam } = require('./errors');
const { buildSubscriptionSchedule, buildSchedulePhase, buildSubscriptionItem, itemList, planFromPrice } = require('./templates');
const { nowSeconds, addInterval, previousAttributes } = require('./util');

const END_BEHAVIORS = ['release', 'cancel'];
const PRORATION_BEHAVIORS = ['always_invoice', 'create_prorations', 'none'];
const INTERVALS = ['day', 'week', 'month', 'year'];
const LIVE = ['not_started', 'active'];

function periodOf(subscription) {
  const [first] = subscription.items.data;
  return { start: first.current_period_start, end: first.current_period_end };
}

function scheduleLog(store, request, created = nowSeconds()) {
  const ids = [];
  const emit = (type, object, previous) => {
    ids.push(store.emit(type, object, { previousAttributes: previous, request, created }).id);
  };
  return { emit, ids };
}

// The schedule's status must let it change.
function assertLive(schedule, what) {
  if (!LIVE.includes(schedule.status)) {
    throw new StripeError(400, {
      message: `You cannot ${what} a subscription schedule that is currently in the \`${schedule.status}\` status.`,
    });
  }
}

// POST /v1/subscription_schedules: from_subscription only (see above).
function createSchedule(store, params, request) {
  if (params.from_subscription === undefined) {
    if (params.customer === undefined) throw missingParam('from_subscription');
    throw invalidParam('customer', 'The fake models schedules made from an existing subscription (from_subscription) only.');
  }
  for (const other of ['customer', 'phases', 'start_date', 'end_behavior', 'default_settings']) {
    if (params[other] !== undefined) {
      throw invalidParam(other, `You cannot set \`${other}\` if \`from_subscription\` is set.`);
    }
  }
  const subscription = store.find(params.from_subscription, 'subscription', { param: 'from_subscription', status: 400 });
  if (['canceled', 'incomplete_expired'].includes(subscription.status)) {
    throw invalidParam('from_subscription', `You cannot migrate a subscription that is ${subscription.status}.`);
  }
  if (subscription.schedule) {
    throw invalidParam('from_subscription',
      `The subscription \`${subscription.id}\` is already attached to a schedule \`${subscription.schedule}\`.`);
  }
  const { start, end } = periodOf(subscription);
  const schedule = buildSubscriptionSchedule({ customer: subscription.customer, subscription: subscription.id });
  schedule.metadata = params.metadata && typeof params.metadata === 'object' ? { ...params.metadata } : {};
  schedule.phases = [buildSchedulePhase({
    items: subscription.items.data.map((item) => ({ price: item.price, quantity: item.quantity })),
    start,
    end,
    trialEnd: subscription.status === 'trialing' ? subscription.trial_end : null,
  })];
  schedule.current_phase = { start_date: start, end_date: end };
  store.put(schedule);
  const before = structuredClone(subscription);
  subscription.schedule = schedule.id;
  const log = scheduleLog(store, request);
  log.emit('subscription_schedule.created', schedule);
  log.emit('customer.subscription.updated', subscription, previousAttributes(before, subscription));
  return schedule;
}

// A phase's item list, checked: [{price (an object), quantity}].
function phaseItems(store, items, param) {
  if (items === undefined) throw missingParam(`${param}[items]`);
  if (!Array.isArray(items) || items.length === 0) throw invalidParam(`${param}[items]`, 'Invalid array');
  const seen = new Set();
  return Array.from(items, (entry, n) => {
    const name = (key) => `${param}[items][${n}][${key}]`;
    if (!entry || typeof entry !== 'object') throw invalidParam(`${param}[items][${n}]`, 'Invalid object');
    const id = entry.price === undefined ? entry.plan : entry.price;
    if (id === undefined) throw missingParam(name('price'));
    const price = store.find(id, 'price', { param: name(entry.price === undefined ? 'plan' : 'price'), status: 400 });
    if (!price.recurring) {
      throw invalidParam(name('price'), 'The price specified is set to `type=one_time` but this field only accepts prices with `type=recurring`.');
    }
    if (seen.has(price.id)) throw invalidParam(name('price'), `A phase cannot have the price ${price.id} twice.`);
    seen.add(price.id);
    const quantity = entry.quantity === undefined ? 1 : intParam(entry.quantity, name('quantity'), { min: 0 });
    return { price, quantity };
  });
}

// A date parameter of a phase: unix seconds, or "now".
function phaseDate(value, param) {
  return value === 'now' ? nowSeconds() : intParam(value, param, { min: 0 });
}

// The end of a phase starting at `start` (see the top).
function phaseEnd(entry, start, items, last, param) {
  const given = ['end_date', 'duration', 'iterations'].filter((key) => entry[key] !== undefined);
  if (given.length > 1) {
    throw invalidParam(`${param}[${given[1]}]`, `You may only specify one of these parameters: ${given.join(', ')}.`);
  }
  if (entry.end_date !== undefined) return phaseDate(entry.end_date, `${param}[end_date]`);
  const { interval, interval_count: count } = items[0].price.recurring;
  if (entry.duration !== undefined) {
    const duration = entry.duration;
    if (!duration || typeof duration !== 'object') throw invalidParam(`${param}[duration]`, 'Invalid object');
    const unit = enumParam(duration.interval, `${param}[duration][interval]`, INTERVALS);
    const n = duration.interval_count === undefined ? 1
      : intParam(duration.interval_count, `${param}[duration][interval_count]`, { min: 1 });
    return addInterval(start, unit, n);
  }
  if (entry.iterations !== undefined) {
    return addInterval(start, interval, count * intParam(entry.iterations, `${param}[iterations]`, { min: 1 }));
  }
  if (!last) throw missingParam(`${param}[end_date]`);
  return addInterval(start, interval, count);
}

// The phases of an update, checked and laid end to end: the first is the
// current phase (same start, same prices), the next start where the one
// before ends.
function planPhases(store, schedule, subscription, phases) {
  if (!Array.isArray(phases) || phases.length === 0) throw invalidParam('phases', 'Invalid array');
  const current = schedule.current_phase;
  let start = current ? current.start_date : nowSeconds();
  return Array.from(phases, (entry, n) => {
    const param = `phases[${n}]`;
    if (!entry || typeof entry !== 'object') throw invalidParam(param, 'Invalid object');
    const items = phaseItems(store, entry.items, param);
    if (entry.start_date !== undefined) {
      const given = phaseDate(entry.start_date, `${param}[start_date]`);
      if (n === 0 && current && given !== current.start_date) {
        throw invalidParam(`${param}[start_date]`, 'You can not modify the start date of the current phase.');
      }
      if (n > 0 && given !== start) {
        throw invalidParam(`${param}[start_date]`, `The start date of a phase must be the end date of the phase before it (${start}).`);
      }
    }
    if (n === 0 && current) {
      const same = items.length === subscription.items.data.length
        && items.every(({ price, quantity }) => subscription.items.data.some((i) => i.price.id === price.id && i.quantity === quantity));
      if (!same) {
        throw invalidParam(`${param}[items]`, 'The fake does not model changing the prices or quantities of the current phase.');
      }
    }
    const end = phaseEnd(entry, start, items, n === phases.length - 1, param);
    if (end <= start) throw invalidParam(`${param}[end_date]`, 'The end date of a phase must be after its start date.');
    if (end <= nowSeconds()) throw invalidParam(`${param}[end_date]`, 'The end date of a phase must be in the future.');
    const trialEnd = entry.trial_end === undefined ? null : phaseDate(entry.trial_end, `${param}[trial_end]`);
    const prorationBehavior = entry.proration_behavior === undefined ? 'create_prorations'
      : enumParam(entry.proration_behavior, `${param}[proration_behavior]`, PRORATION_BEHAVIORS);
    const phase = { items, start, end, trialEnd, prorationBehavior, metadata: entry.metadata || {} };
    start = end;
    return phase;
  });
}

// POST /v1/subscription_schedules/:id: phases, end_behavior, metadata,
// proration_behavior (checked: an update of the modeled kind changes no
// current price, so nothing is prorated).
function updateSchedule(store, schedule, params, request) {
  assertLive(schedule, 'update');
  const subscription = store.find(schedule.subscription, 'subscription');
  if (params.proration_behavior !== undefined) enumParam(params.proration_behavior, 'proration_behavior', PRORATION_BEHAVIORS);
  const endBehavior = params.end_behavior === undefined ? schedule.end_behavior
    : enumParam(params.end_behavior, 'end_behavior', END_BEHAVIORS);
  const phases = params.phases === undefined ? null : planPhases(store, schedule, subscription, params.phases);
  const before = structuredClone(schedule);
  schedule.end_behavior = endBehavior;
  if (params.metadata !== undefined) {
    schedule.metadata = params.metadata === '' ? {} : { ...schedule.metadata, ...params.metadata };
    for (const [key, value] of Object.entries(schedule.metadata)) if (value === '') delete schedule.metadata[key];
  }
  if (phases) {
    schedule.phases = phases.map((p) => buildSchedulePhase(p));
    schedule.current_phase = { start_date: phases[0].start, end_date: phases[0].end };
  }
  const previous = previousAttributes(before, schedule);
  if (Object.keys(previous).length) scheduleLog(store, request).emit('subscription_schedule.updated', schedule, previous);
  return schedule;
}

// Detaches a schedule from its subscription: released (the subscription
// goes on as it is) or completed/canceled.
function detach(store, schedule, status, at) {
  const subscription = store.get(schedule.subscription, 'subscription');
  const before = subscription && structuredClone(subscription);
  schedule.status = status;
  schedule.current_phase = null;
  if (status === 'released') {
    schedule.released_at = at;
    schedule.released_subscription = schedule.subscription;
  } else if (status === 'completed') schedule.completed_at = at;
  else schedule.canceled_at = at;
  schedule.subscription = null;
  if (subscription) subscription.schedule = null;
  return { subscription, before };
}

// POST /v1/subscription_schedules/:id/release (preserve_cancel_date
// checked, not modeled).
function releaseSchedule(store, schedule, params, request) {
  assertLive(schedule, 'release');
  if (params.preserve_cancel_date !== undefined) boolParam(params.preserve_cancel_date, 'preserve_cancel_date');
  const log = scheduleLog(store, request);
  const { subscription, before } = detach(store, schedule, 'released', nowSeconds());
  log.emit('subscription_schedule.released', schedule);
  if (subscription) log.emit('customer.subscription.updated', subscription, previousAttributes(before, subscription));
  return schedule;
}

// POST /v1/subscription_schedules/:id/cancel: the schedule and its
// subscription end now (invoice_now and prorate checked, not modeled).
function cancelSchedule(store, schedule, params, request, endSubscription) {
  assertLive(schedule, 'cancel');
  for (const flag of ['invoice_now', 'prorate']) if (params[flag] !== undefined) boolParam(params[flag], flag);
  const log = scheduleLog(store, request);
  const { subscription } = detach(store, schedule, 'canceled', nowSeconds());
  log.emit('subscription_schedule.canceled', schedule);
  if (subscription && subscription.status !== 'canceled') {
    endSubscription(subscription, 'cancellation_requested');
    log.emit('customer.subscription.deleted', subscription);
  }
  return schedule;
}

// At a renewal (the subscription's period moved on: start is the new
// period's start), the schedule of the subscription enters the phase that
// starts then: the subscription's items become its prices (an item whose
// price stays keeps its id), subscription_schedule.updated; or, past its
// last phase, it ends by its end_behavior: released (the subscription goes
// on) or completed (the subscription is canceled, which the caller does
// when this returns 'cancel').  `emit` is the renewal's event log.
function enterNextPhase(store, subscription, start, emit) {
  const schedule = subscription.schedule && store.get(subscription.schedule, 'subscription_schedule');
  if (!schedule || !LIVE.includes(schedule.status)) return null;
  const current = schedule.current_phase;
  if (current && current.end_date > start) return null;
  const phase = schedule.phases.find((p) => p.start_date === start);
  if (!phase) {
    const last = schedule.phases[schedule.phases.length - 1];
    if (!last || last.end_date > start) return null;
    const completed = schedule.end_behavior === 'cancel';
    detach(store, schedule, completed ? 'completed' : 'released', start);
    emit(completed ? 'subscription_schedule.completed' : 'subscription_schedule.released', schedule);
    return completed ? 'cancel' : 'released';
  }
  const before = structuredClone(schedule);
  const items = subscription.items.data;
  subscription.items = itemList(subscription.id, phase.items.map((entry) => {
    const price = store.find(entry.price, 'price');
    const kept = items.find((item) => item.price.id === price.id);
    if (kept) return Object.assign(kept, { quantity: entry.quantity, plan: planFromPrice(price) });
    const { interval, interval_count: count } = price.recurring;
    return buildSubscriptionItem({
      subscription: subscription.id, price, quantity: entry.quantity, periodStart: start,
      periodEnd: addInterval(start, interval, count),
    });
  }));
  schedule.current_phase = { start_date: phase.start_date, end_date: phase.end_date };
  emit('subscription_schedule.updated', schedule, previousAttributes(before, schedule));
  return 'entered';
}

// A schedule by id (404 naming it as Stripe does).
function findSchedule(store, id) {
  return store.find(id, 'subscription_schedule', { kind: 'subscription schedule' });
}

module.exports = {
  createSchedule,
  updateSchedule,
  releaseSchedule,
  cancelSchedule,
  enterNextPhase,
  findSchedule,
  detach,
};
