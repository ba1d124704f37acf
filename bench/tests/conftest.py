from support.tiers import pytest_runtest_setup  # noqa: F401  (the tiers: live, browser, slow)
