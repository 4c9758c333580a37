def test_fresh_database_is_migrated(db):
    assert db.scalar("SELECT to_regprocedure('mpesa_sync.fix_bars_v2(uuid[])') IS NOT NULL")
    bar = db.add_bar()
    assert db.enabled(bar) is False
