-- The demo's sample: five bars, three of them drifted the way the real
-- platform drifts (staff see M-Pesa on, customers are told it is off).
INSERT INTO public.bars (id, name, mpesa_enabled) VALUES
    ('00000000-0000-4000-8000-000000000001', 'Mama Oliech',   false),  -- active credentials, hidden from customers
    ('00000000-0000-4000-8000-000000000002', 'Java House',    true),   -- no credentials at all, shown
    ('00000000-0000-4000-8000-000000000003', 'Nyama Mama',    true),   -- credentials switched off, shown
    ('00000000-0000-4000-8000-000000000004', 'K''Osewe',      true),   -- consistent: production active
    ('00000000-0000-4000-8000-000000000005', 'Carnivore',     NULL);   -- NULL from an old import, one of two rows active

INSERT INTO public.mpesa_credentials
    (tenant_id, environment, business_shortcode,
     consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
VALUES
    ('00000000-0000-4000-8000-000000000001', 'sandbox',    '174379', 'k', 's', 'p', true),
    ('00000000-0000-4000-8000-000000000003', 'production', '600126', 'k', 's', 'p', false),
    ('00000000-0000-4000-8000-000000000004', 'production', '600127', 'k', 's', 'p', true),
    ('00000000-0000-4000-8000-000000000005', 'sandbox',    '174379', 'k', 's', 'p', false),
    ('00000000-0000-4000-8000-000000000005', 'production', '600128', 'k', 's', 'p', true);
