"""kitchen.yml suites run by tests/harness/kitchen.py."""


def pytest_configure(config):
    config.addinivalue_line("markers", "fleet: salt master, salt-ssh and kitchen suites on hosts")
