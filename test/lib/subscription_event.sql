-- pg_temp.subscription_created(user_ref, price): a customer.subscription.created
-- event of an active one-item subscription of that price for the user
-- (customer cus_<user>, linked through metadata.user_ref), created a minute
-- ago, in the current period.  For tests: psql's \i, then
--   SELECT stripe_billing.stripe_apply_event(pg_temp.subscription_created('user_1', 'price_x'));
CREATE FUNCTION pg_temp.subscription_created(u text, price text) RETURNS jsonb
LANGUAGE sql AS $$
  SELECT jsonb_build_object(
    'id', 'evt_created_' || u, 'object', 'event', 'type', 'customer.subscription.created', 'livemode', false,
    'created', extract(epoch FROM now())::bigint - 60,
    'data', jsonb_build_object('object', jsonb_build_object(
      'id', 'sub_' || u, 'object', 'subscription', 'customer', 'cus_' || u, 'status', 'active',
      'metadata', jsonb_build_object('user_ref', u),
      'current_period_start', extract(epoch FROM now())::bigint - 86400,
      'current_period_end', extract(epoch FROM now())::bigint + 30 * 86400,
      'items', jsonb_build_object('object', 'list', 'has_more', false, 'data', jsonb_build_array(jsonb_build_object(
        'id', 'si_' || u, 'object', 'subscription_item', 'quantity', 1,
        'price', jsonb_build_object('id', price, 'object', 'price', 'product', 'prod_' || price)))))))
$$;
