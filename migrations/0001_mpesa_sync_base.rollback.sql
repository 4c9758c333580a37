-- Undo 0001: drop what it created, keep everything the host had.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM mpesa_sync.installed_host_objects
               WHERE object = 'column:public.bars.mpesa_enabled') THEN
        ALTER TABLE public.bars DROP COLUMN mpesa_enabled;
    END IF;

    -- Tables created for a new database go only while empty: a rollback never
    -- loses data.
    IF EXISTS (SELECT 1 FROM mpesa_sync.installed_host_objects
               WHERE object = 'table:public.mpesa_credentials') THEN
        IF EXISTS (SELECT 1 FROM public.mpesa_credentials) THEN
            RAISE NOTICE 'mpesa_sync: keeping public.mpesa_credentials, it holds rows';
        ELSE
            DROP TABLE public.mpesa_credentials;
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM mpesa_sync.installed_host_objects
               WHERE object = 'table:public.bars') THEN
        IF to_regclass('public.mpesa_credentials') IS NOT NULL
           OR EXISTS (SELECT 1 FROM public.bars) THEN
            RAISE NOTICE 'mpesa_sync: keeping public.bars, it holds rows or is referenced';
        ELSE
            DROP TABLE public.bars;
        END IF;
    END IF;
END
$$;

DROP SCHEMA mpesa_sync CASCADE;
