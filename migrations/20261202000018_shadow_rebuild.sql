-- Rebuilds without blocking readers (issue 17): a projection is replayed into shadow copies
-- of its tables, in a schema of their own, while the API keeps reading the live ones; then
-- each shadow table takes its live table's place in one short transaction. This function
-- does one table's swap: the shadow gets the live table's row-level security, policies and
-- grants (which `CREATE TABLE ... (LIKE ... INCLUDING ALL)` does not copy), the live table
-- is dropped and the shadow moved into `public` under its name, its indexes renamed to the
-- live ones' names (so later migrations find them as they were made).
CREATE FUNCTION tenantflow_swap_in_shadow(shadow text, tbl text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    live regclass := format('public.%I', tbl)::regclass;
    p record;
    g record;
    rls boolean;
    forced boolean;
    roles text;
    i record;
    old_name text;
    index_names jsonb;
BEGIN
    -- The live indexes by their definition with the name and table left out.
    SELECT coalesce(jsonb_object_agg(
               regexp_replace(indexdef, ' INDEX \S+ ON \S+ ', ' INDEX ON '), indexname), '{}')
    INTO index_names FROM pg_indexes WHERE schemaname = 'public' AND tablename = tbl;
    SELECT relrowsecurity, relforcerowsecurity INTO rls, forced FROM pg_class WHERE oid = live;
    FOR p IN
        SELECT policyname, permissive, pol.roles, cmd, qual, with_check
        FROM pg_policies pol WHERE schemaname = 'public' AND tablename = tbl
    LOOP
        SELECT string_agg(CASE WHEN r = 'public' THEN 'PUBLIC' ELSE quote_ident(r) END, ', ')
        INTO roles FROM unnest(p.roles) AS r;
        EXECUTE format('CREATE POLICY %I ON %I.%I AS %s FOR %s TO %s%s%s',
            p.policyname, shadow, tbl, p.permissive, p.cmd, roles,
            CASE WHEN p.qual IS NOT NULL THEN ' USING (' || p.qual || ')' ELSE '' END,
            CASE WHEN p.with_check IS NOT NULL THEN ' WITH CHECK (' || p.with_check || ')' ELSE '' END);
    END LOOP;
    FOR g IN
        SELECT grantee, privilege_type FROM information_schema.role_table_grants
        WHERE table_schema = 'public' AND table_name = tbl AND grantee <> current_user
    LOOP
        EXECUTE format('GRANT %s ON %I.%I TO %s', g.privilege_type, shadow, tbl,
            CASE WHEN g.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(g.grantee) END);
    END LOOP;
    IF rls THEN
        EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY', shadow, tbl);
    END IF;
    IF forced THEN
        EXECUTE format('ALTER TABLE %I.%I FORCE ROW LEVEL SECURITY', shadow, tbl);
    END IF;
    EXECUTE format('DROP TABLE public.%I', tbl);
    EXECUTE format('ALTER TABLE %I.%I SET SCHEMA public', shadow, tbl);
    FOR i IN SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = tbl LOOP
        old_name := index_names ->> regexp_replace(i.indexdef, ' INDEX \S+ ON \S+ ', ' INDEX ON ');
        IF old_name IS NOT NULL AND old_name <> i.indexname THEN
            EXECUTE format('ALTER INDEX public.%I RENAME TO %I', i.indexname, old_name);
        END IF;
    END LOOP;
END
$$;
