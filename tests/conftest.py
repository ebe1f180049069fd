pytest_plugins = ["tests.fixtures.influxd", "tests.fixtures.mosquitto",
                  "tests.fixtures.prometheus"]
