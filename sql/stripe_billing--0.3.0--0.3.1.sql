-- stripe_billing 0.3.0 -> 0.3.1
\echo Use "ALTER EXTENSION stripe_billing UPDATE TO '0.3.1'" to load this file. \quit
