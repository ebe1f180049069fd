pytest_plugins = [
    "tests.fixtures.chromium",
    "tests.fixtures.influxd",
    "tests.fixtures.mosquitto",
    "tests.fixtures.prometheus",
]
