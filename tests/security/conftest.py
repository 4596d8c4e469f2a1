from tests.accounts.conftest import clock, person  # noqa: F401
