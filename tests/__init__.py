"""flashsale tests (a package, so ``tests.support`` is importable from every test)."""
