-- A Segment warehouse (PostgreSQL destination) of a small shop, to try
-- `meltano run tap-postgres target-everflow` in the dev environment (a dry run). It is the
-- end-to-end tests' batch 1 (tests/e2e/fixtures/warehouse.sql) without the conversion they
-- dead-letter on purpose, so a first run passes the default failure threshold (5%).
-- Names no schema: run it with the schema first on the search_path, e.g.
--   psql "$SEGMENT_WAREHOUSE_URL" -c 'CREATE SCHEMA segment_shop'
--   PGOPTIONS='-c search_path=segment_shop' psql "$SEGMENT_WAREHOUSE_URL" -v ON_ERROR_STOP=1 -f samples/segment-warehouse.sql

-- Tables, as Segment's loader creates them.

CREATE TABLE tracks (
    id text NOT NULL PRIMARY KEY,
    received_at timestamptz,
    uuid_ts timestamptz,
    anonymous_id text,
    user_id text,
    event text,
    event_text text,
    timestamp timestamptz,
    original_timestamp timestamptz,
    sent_at timestamptz,
    context_ip text,
    context_user_agent text,
    context_locale text,
    context_timezone text,
    context_instance_id text,
    context_library_name text,
    context_library_version text,
    context_page_path text,
    context_page_referrer text,
    context_page_search text,
    context_page_title text,
    context_page_url text,
    context_traits_email text,
    context_referrer_type text,
    context_referrer_id text,
    context_app_name text,
    context_app_version text,
    context_app_build text,
    context_app_namespace text,
    context_device_id text,
    context_device_advertising_id text,
    context_device_ad_tracking_enabled boolean,
    context_device_manufacturer text,
    context_device_model text,
    context_device_name text,
    context_device_type text,
    context_network_wifi boolean,
    context_network_cellular boolean,
    context_network_carrier text,
    context_network_bluetooth boolean,
    context_os_name text,
    context_os_version text,
    context_screen_width bigint,
    context_screen_height bigint,
    context_screen_density double precision,
    context_location_latitude double precision,
    context_location_longitude double precision
);

CREATE TABLE order_completed (
    id text NOT NULL PRIMARY KEY,
    received_at timestamptz,
    uuid_ts timestamptz,
    anonymous_id text,
    user_id text,
    event text,
    event_text text,
    timestamp timestamptz,
    original_timestamp timestamptz,
    sent_at timestamptz,
    context_ip text,
    context_user_agent text,
    context_locale text,
    context_timezone text,
    context_instance_id text,
    context_library_name text,
    context_library_version text,
    context_page_path text,
    context_page_referrer text,
    context_page_search text,
    context_page_title text,
    context_page_url text,
    context_traits_email text,
    context_referrer_type text,
    context_referrer_id text,
    context_app_name text,
    context_app_version text,
    context_app_build text,
    context_app_namespace text,
    context_device_id text,
    context_device_advertising_id text,
    context_device_ad_tracking_enabled boolean,
    context_device_manufacturer text,
    context_device_model text,
    context_device_name text,
    context_device_type text,
    context_network_wifi boolean,
    context_network_cellular boolean,
    context_network_carrier text,
    context_network_bluetooth boolean,
    context_os_name text,
    context_os_version text,
    context_screen_width bigint,
    context_screen_height bigint,
    context_screen_density double precision,
    context_location_latitude double precision,
    context_location_longitude double precision,
    order_id text,
    checkout_id text,
    affiliate_id bigint,
    total double precision,
    subtotal double precision,
    revenue double precision,
    shipping double precision,
    tax double precision,
    discount double precision,
    coupon text,
    currency text,
    adv1 text,
    adv2 text,
    adv3 text,
    adv4 text,
    adv5 text,
    transaction_id text,
    products text
);

-- Batch 1: loaded before the first pipeline run.

INSERT INTO tracks (id, received_at, uuid_ts, anonymous_id, user_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_page_path, context_page_referrer, context_page_search, context_page_title, context_page_url, context_traits_email, context_referrer_type, context_referrer_id)
    VALUES ('ajs-next-1a2b3c4d5e6f7083', '2026-11-20T14:01:11.280Z', '2026-11-20T14:08:24.280000+00:00', 'anon-web-0001', 'user-1001', 'product_viewed', 'Product Viewed', '2026-11-20T14:01:10.080Z', '2026-11-20T14:01:10.000Z', '2026-11-20T14:01:11.200Z', '203.0.113.24', 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36', 'en-US', 'America/New_York', 'analytics.js', 'next-1.70.0', '/kettles/kettle', 'https://partner.example.net/deals', '', 'Example Shop', 'https://shop.example.com/kettles/kettle', 'ada@example.com', 'everflow', 'ef-tx-web-1001');
INSERT INTO tracks (id, received_at, uuid_ts, anonymous_id, user_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_page_path, context_page_referrer, context_page_search, context_page_title, context_page_url, context_traits_email, context_referrer_type, context_referrer_id)
    VALUES ('ajs-next-1a2b3c4d5e6f7084', '2026-11-20T14:02:21.280Z', '2026-11-20T14:09:34.280000+00:00', 'anon-web-0001', 'user-1001', 'checkout_started', 'Checkout Started', '2026-11-20T14:02:20.080Z', '2026-11-20T14:02:20.000Z', '2026-11-20T14:02:21.200Z', '203.0.113.24', 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36', 'en-US', 'America/New_York', 'analytics.js', 'next-1.70.0', '/checkout', 'https://partner.example.net/deals', '', 'Example Shop', 'https://shop.example.com/checkout', 'ada@example.com', 'everflow', 'ef-tx-web-1001');
INSERT INTO tracks (id, received_at, uuid_ts, anonymous_id, user_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_page_path, context_page_referrer, context_page_search, context_page_title, context_page_url, context_traits_email, context_referrer_type, context_referrer_id)
    VALUES ('ajs-next-1a2b3c4d5e6f7085', '2026-11-20T14:03:12.280Z', '2026-11-20T14:10:25.280000+00:00', 'anon-web-0001', 'user-1001', 'order_completed', 'Order Completed', '2026-11-20T14:03:11.080Z', '2026-11-20T14:03:11.000Z', '2026-11-20T14:03:12.200Z', '203.0.113.24', 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36', 'en-US', 'America/New_York', 'analytics.js', 'next-1.70.0', '/checkout/complete', 'https://partner.example.net/deals', '', 'Example Shop', 'https://shop.example.com/checkout/complete', 'ada@example.com', 'everflow', 'ef-tx-web-1001');
INSERT INTO order_completed (id, received_at, uuid_ts, anonymous_id, user_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_page_path, context_page_referrer, context_page_search, context_page_title, context_page_url, context_traits_email, context_referrer_type, context_referrer_id, order_id, checkout_id, affiliate_id, total, subtotal, revenue, shipping, tax, discount, coupon, currency, adv1, products)
    VALUES ('ajs-next-1a2b3c4d5e6f7085', '2026-11-20T14:03:12.280Z', '2026-11-20T14:10:25.280000+00:00', 'anon-web-0001', 'user-1001', 'order_completed', 'Order Completed', '2026-11-20T14:03:11.080Z', '2026-11-20T14:03:11.000Z', '2026-11-20T14:03:12.200Z', '203.0.113.24', 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36', 'en-US', 'America/New_York', 'analytics.js', 'next-1.70.0', '/checkout/complete', 'https://partner.example.net/deals', '', 'Example Shop', 'https://shop.example.com/checkout/complete', 'ada@example.com', 'everflow', 'ef-tx-web-1001', '1001', 'chk-1001', 12, 76.0, 62.5, 62.5, 8.0, 5.5, 6.25, 'SPRING10', 'USD', 'blue', '[{"product_id":"SKU-1","sku":"SKU-1","name":"Kettle","price":49.0,"quantity":1},{"product_id":"SKU-2","sku":"SKU-2","name":"Mug","price":6.75,"quantity":2}]');
INSERT INTO tracks (id, received_at, uuid_ts, anonymous_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_page_path, context_page_referrer, context_page_search, context_page_title, context_page_url)
    VALUES ('ajs-next-2b3c4d5e6f708192', '2026-11-20T14:20:46.280Z', '2026-11-20T14:27:59.280000+00:00', 'anon-web-0002', 'order_completed', 'Order Completed', '2026-11-20T14:20:45.080Z', '2026-11-20T14:20:45.000Z', '2026-11-20T14:20:46.200Z', '198.51.100.61', 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36', 'en-US', 'America/New_York', 'analytics.js', 'next-1.70.0', '/checkout/complete', 'https://partner.example.net/deals', '', 'Example Shop', 'https://shop.example.com/checkout/complete');
INSERT INTO order_completed (id, received_at, uuid_ts, anonymous_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_page_path, context_page_referrer, context_page_search, context_page_title, context_page_url, order_id, total, revenue, currency, products)
    VALUES ('ajs-next-2b3c4d5e6f708192', '2026-11-20T14:20:46.280Z', '2026-11-20T14:27:59.280000+00:00', 'anon-web-0002', 'order_completed', 'Order Completed', '2026-11-20T14:20:45.080Z', '2026-11-20T14:20:45.000Z', '2026-11-20T14:20:46.200Z', '198.51.100.61', 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36', 'en-US', 'America/New_York', 'analytics.js', 'next-1.70.0', '/checkout/complete', 'https://partner.example.net/deals', '', 'Example Shop', 'https://shop.example.com/checkout/complete', '1002', 25.0, 22.0, 'USD', '[{"sku":"SKU-3","name":"Tea Towel","price":11.0,"quantity":2}]');
INSERT INTO tracks (id, received_at, uuid_ts, anonymous_id, user_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_page_path, context_page_referrer, context_page_search, context_page_title, context_page_url, context_traits_email, context_referrer_type, context_referrer_id)
    VALUES ('ajs-next-3c4d5e6f70819203', '2026-11-20T15:02:09.280Z', '2026-11-20T15:09:22.280000+00:00', 'anon-web-0003', 'user-1003', 'order_completed', 'Order Completed', '2026-11-20T15:02:08.080Z', '2026-11-20T15:02:08.000Z', '2026-11-20T15:02:09.200Z', '203.0.113.99', 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1', 'en-US', 'America/New_York', 'analytics.js', 'next-1.70.0', '/checkout/complete', 'https://partner.example.net/deals', '', 'Example Shop', 'https://shop.example.com/checkout/complete', 'grace@example.com', 'everflow', 'ef-tx-web-1003');
INSERT INTO order_completed (id, received_at, uuid_ts, anonymous_id, user_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_page_path, context_page_referrer, context_page_search, context_page_title, context_page_url, context_traits_email, context_referrer_type, context_referrer_id, order_id, total, revenue, currency, adv2)
    VALUES ('ajs-next-3c4d5e6f70819203', '2026-11-20T15:02:09.280Z', '2026-11-20T15:09:22.280000+00:00', 'anon-web-0003', 'user-1003', 'order_completed', 'Order Completed', '2026-11-20T15:02:08.080Z', '2026-11-20T15:02:08.000Z', '2026-11-20T15:02:09.200Z', '203.0.113.99', 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1', 'en-US', 'America/New_York', 'analytics.js', 'next-1.70.0', '/checkout/complete', 'https://partner.example.net/deals', '', 'Example Shop', 'https://shop.example.com/checkout/complete', 'grace@example.com', 'everflow', 'ef-tx-web-1003', 'ORD-42', 39.9, 33.0, 'USD', '42');
INSERT INTO tracks (id, received_at, uuid_ts, anonymous_id, user_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_locale, context_timezone, context_instance_id, context_library_name, context_library_version, context_traits_email, context_referrer_type, context_referrer_id, context_app_name, context_app_version, context_app_build, context_app_namespace, context_device_id, context_device_advertising_id, context_device_ad_tracking_enabled, context_device_manufacturer, context_device_model, context_device_name, context_device_type, context_network_wifi, context_network_cellular, context_network_carrier, context_network_bluetooth, context_os_name, context_os_version, context_screen_width, context_screen_height, context_location_latitude, context_location_longitude)
    VALUES ('8D1F0C7A-5B2E-4F5A-9C3D-2E1F0A9B8C71', '2026-11-20T16:11:31.280Z', '2026-11-20T16:18:44.280000+00:00', 'ios-anon-0004', 'user-1004', 'order_completed', 'Order Completed', '2026-11-20T16:11:30.080Z', '2026-11-20T16:11:26.500Z', '2026-11-20T16:11:27.700Z', '198.51.100.7', 'en-US', 'America/Los_Angeles', '3f0e6d52-6c6b-4a35-9a4b-1f1b8c3a9e01', 'analytics-swift', '1.5.11', 'lin@example.com', 'everflow', 'ef-tx-ios-1004', 'Example Shop', '3.2.1', '412', 'com.example.shop', '7A1B2C3D-0000-4000-8000-00000000A001', 'EA7583CD-A667-48BC-B806-42ECB2B48606', false, 'Apple', 'iPhone15,2', 'iPhone', 'ios', true, false, 'T-Mobile', false, 'iOS', '17.4', 393, 852, 37.7749, -122.4194);
INSERT INTO order_completed (id, received_at, uuid_ts, anonymous_id, user_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_locale, context_timezone, context_instance_id, context_library_name, context_library_version, context_traits_email, context_referrer_type, context_referrer_id, context_app_name, context_app_version, context_app_build, context_app_namespace, context_device_id, context_device_advertising_id, context_device_ad_tracking_enabled, context_device_manufacturer, context_device_model, context_device_name, context_device_type, context_network_wifi, context_network_cellular, context_network_carrier, context_network_bluetooth, context_os_name, context_os_version, context_screen_width, context_screen_height, context_location_latitude, context_location_longitude, order_id, total, revenue, coupon, currency, products)
    VALUES ('8D1F0C7A-5B2E-4F5A-9C3D-2E1F0A9B8C71', '2026-11-20T16:11:31.280Z', '2026-11-20T16:18:44.280000+00:00', 'ios-anon-0004', 'user-1004', 'order_completed', 'Order Completed', '2026-11-20T16:11:30.080Z', '2026-11-20T16:11:26.500Z', '2026-11-20T16:11:27.700Z', '198.51.100.7', 'en-US', 'America/Los_Angeles', '3f0e6d52-6c6b-4a35-9a4b-1f1b8c3a9e01', 'analytics-swift', '1.5.11', 'lin@example.com', 'everflow', 'ef-tx-ios-1004', 'Example Shop', '3.2.1', '412', 'com.example.shop', '7A1B2C3D-0000-4000-8000-00000000A001', 'EA7583CD-A667-48BC-B806-42ECB2B48606', false, 'Apple', 'iPhone15,2', 'iPhone', 'ios', true, false, 'T-Mobile', false, 'iOS', '17.4', 393, 852, 37.7749, -122.4194, '1004', 129.99, 119.99, '2026', 'USD', '[{"product_id":"SKU-9","sku":"SKU-9","name":"Headphones","price":119.99,"quantity":1}]');
INSERT INTO tracks (id, received_at, uuid_ts, anonymous_id, user_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_traits_email, context_referrer_type, context_referrer_id, context_app_name, context_app_version, context_app_build, context_app_namespace, context_device_id, context_device_advertising_id, context_device_ad_tracking_enabled, context_device_manufacturer, context_device_model, context_device_name, context_device_type, context_network_wifi, context_network_cellular, context_network_carrier, context_network_bluetooth, context_os_name, context_os_version, context_screen_width, context_screen_height, context_screen_density)
    VALUES ('c0a8012e-5e2f-4c1b-9f6e-0b3d2a1f0005', '2026-11-20T16:45:03.280Z', '2026-11-20T16:52:16.280000+00:00', 'and-anon-0005', 'user-1005', 'subscription_started', 'Subscription Started', '2026-11-20T16:45:02.080Z', '2026-11-20T16:45:02.000Z', '2026-11-20T16:45:03.200Z', '198.51.100.23', 'Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UD1A.230803.041)', 'en-US', 'America/Chicago', 'analytics-kotlin', '1.16.3', 'sam@example.com', 'everflow', 'ef-tx-and-1005', 'Example Shop', '3.2.0', '3020', 'com.example.shop.android', 'a1b2c3d4e5f60718', '38400000-8cf0-11bd-b23e-10b96e40000d', true, 'Google', 'Pixel 8', 'shiba', 'android', false, true, 'Verizon', false, 'Android', '14', 1080, 2400, 2.625);
INSERT INTO tracks (id, received_at, uuid_ts, anonymous_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_app_name, context_app_version, context_app_build, context_app_namespace, context_device_id, context_device_advertising_id, context_device_ad_tracking_enabled, context_device_manufacturer, context_device_model, context_device_name, context_device_type, context_network_wifi, context_network_cellular, context_network_carrier, context_network_bluetooth, context_os_name, context_os_version, context_screen_width, context_screen_height, context_screen_density)
    VALUES ('c0a8012e-5e2f-4c1b-9f6e-0b3d2a1f0006', '2026-11-20T17:31:00.280Z', '2026-11-20T17:38:13.280000+00:00', 'and-anon-0006', 'order_completed', 'Order Completed', '2026-11-20T17:30:59.080Z', '2026-11-20T17:30:59.000Z', '2026-11-20T17:31:00.200Z', '198.51.100.24', 'Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UD1A.230803.041)', 'en-US', 'America/Chicago', 'analytics-kotlin', '1.16.3', 'Example Shop', '3.2.0', '3020', 'com.example.shop.android', 'a1b2c3d4e5f60718', '38400000-8cf0-11bd-b23e-10b96e40000d', true, 'Google', 'Pixel 8', 'shiba', 'android', true, false, 'Verizon', false, 'Android', '14', 1080, 2400, 2.625);
INSERT INTO order_completed (id, received_at, uuid_ts, anonymous_id, event, event_text, timestamp, original_timestamp, sent_at, context_ip, context_user_agent, context_locale, context_timezone, context_library_name, context_library_version, context_app_name, context_app_version, context_app_build, context_app_namespace, context_device_id, context_device_advertising_id, context_device_ad_tracking_enabled, context_device_manufacturer, context_device_model, context_device_name, context_device_type, context_network_wifi, context_network_cellular, context_network_carrier, context_network_bluetooth, context_os_name, context_os_version, context_screen_width, context_screen_height, context_screen_density, order_id, revenue, currency, transaction_id, products)
    VALUES ('c0a8012e-5e2f-4c1b-9f6e-0b3d2a1f0006', '2026-11-20T17:31:00.280Z', '2026-11-20T17:38:13.280000+00:00', 'and-anon-0006', 'order_completed', 'Order Completed', '2026-11-20T17:30:59.080Z', '2026-11-20T17:30:59.000Z', '2026-11-20T17:31:00.200Z', '198.51.100.24', 'Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UD1A.230803.041)', 'en-US', 'America/Chicago', 'analytics-kotlin', '1.16.3', 'Example Shop', '3.2.0', '3020', 'com.example.shop.android', 'a1b2c3d4e5f60718', '38400000-8cf0-11bd-b23e-10b96e40000d', true, 'Google', 'Pixel 8', 'shiba', 'android', true, false, 'Verizon', false, 'Android', '14', 1080, 2400, 2.625, '1006', 18.5, 'USD', 'ef-tx-and-1006', '[{"sku":"SKU-4","name":"Filter Pack","quantity":3}]');
